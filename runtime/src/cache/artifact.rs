//! PTX artefacts and their byte form in the on-disk cache.

use kiln_compiler::ir::{Param, ParamKind};
use kiln_compiler::DType;

/// A kernel compiled to PTX, with everything needed to load and launch it without compiling
/// anything: what a warm start reads from disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PtxArtifact {
    /// The kernel's name in the source.
    pub kernel: String,
    /// Its run-time parameters, for argument checking.
    pub params: Vec<Param>,
    /// The PTX module text.
    pub ptx: String,
    /// The `.entry` to launch.
    pub entry: String,
    /// Threads per block (one block runs one program).
    pub threads_per_block: u32,
    /// Dynamic shared memory each launch gives the kernel, in bytes.
    pub shared_bytes: u32,
    /// The specialisation it was compiled for: bit `i` set, parameter `i` is assumed 16-byte
    /// aligned (a pointer) or divisible by 16 (an integer). Launches are checked against it.
    pub divisible_by_16: u64,
    /// Whether it was compiled with bounds checks (two more parameters, see
    /// `kiln_compiler::backend::nvptx::PtxOptions::bounds_checks`).
    pub bounds_checks: bool,
    /// The PTX assembled for the GPU it was compiled on (empty if not yet): what a warm start
    /// loads, so it does not depend on the driver's own JIT cache.
    pub cubin: Vec<u8>,
}

impl PtxArtifact {
    /// The artefact as bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Vec::with_capacity(self.ptx.len() + 256);
        put_str(&mut w, &self.kernel);
        put_u32(&mut w, self.params.len() as u32);
        for p in &self.params {
            put_str(&mut w, &p.name);
            let (tag, dtype) = match p.kind {
                ParamKind::Ptr { pointee, mutable } => (u8::from(mutable), pointee),
                ParamKind::Scalar(d) => (2, d),
            };
            w.push(tag);
            put_str(&mut w, dtype.name());
        }
        put_str(&mut w, &self.entry);
        put_u32(&mut w, self.threads_per_block);
        put_u32(&mut w, self.shared_bytes);
        w.extend_from_slice(&self.divisible_by_16.to_le_bytes());
        w.push(u8::from(self.bounds_checks));
        put_str(&mut w, &self.ptx);
        put_bytes(&mut w, &self.cubin);
        w
    }

    /// Reads bytes written by [`PtxArtifact::encode`]; `None` if they are not such bytes.
    pub fn decode(bytes: &[u8]) -> Option<PtxArtifact> {
        let mut r = Reader(bytes);
        let kernel = r.str()?;
        let count = r.u32()?;
        let mut params = Vec::new();
        for _ in 0..count {
            let name = r.str()?;
            let tag = r.u8()?;
            let dtype = DType::from_name(&r.str()?)?;
            let kind = match tag {
                0 | 1 => ParamKind::Ptr {
                    pointee: dtype,
                    mutable: tag == 1,
                },
                2 => ParamKind::Scalar(dtype),
                _ => return None,
            };
            params.push(Param { name, kind });
        }
        let artifact = PtxArtifact {
            kernel,
            params,
            entry: r.str()?,
            threads_per_block: r.u32()?,
            shared_bytes: r.u32()?,
            divisible_by_16: r.u64()?,
            bounds_checks: match r.u8()? {
                0 => false,
                1 => true,
                _ => return None,
            },
            ptx: r.str()?,
            cubin: r.bytes()?.to_vec(),
        };
        r.0.is_empty().then_some(artifact)
    }
}

fn put_u32(w: &mut Vec<u8>, v: u32) {
    w.extend_from_slice(&v.to_le_bytes());
}

fn put_str(w: &mut Vec<u8>, s: &str) {
    put_bytes(w, s.as_bytes());
}

fn put_bytes(w: &mut Vec<u8>, b: &[u8]) {
    w.extend_from_slice(&(b.len() as u64).to_le_bytes());
    w.extend_from_slice(b);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = u64::from_le_bytes(self.take(8)?.try_into().ok()?);
        self.take(usize::try_from(len).ok()?)
    }

    fn str(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
}
