//! Data-parallel `kiln train`: how a process takes part in a run of several ranks.
//!
//! - `kiln train --gpus N` is the launcher: it starts N copies of itself on this host, rank `i`
//!   on `cuda:i`, with the environment torchrun would give them, prints rank 0's output and the
//!   others' prefixed with `[rank i]`, and exits with the first failing rank's exit code after
//!   stopping the others.
//! - A process whose environment names a world of several ranks (`WORLD_SIZE`, `RANK`,
//!   `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`: torchrun, an `srun` wrapper, or the launcher)
//!   is one rank: it trains on `cuda:LOCAL_RANK`, meets the others over TCP at
//!   `MASTER_ADDR:MASTER_PORT` for NCCL's unique id, and exits with an error when a peer dies
//!   or falls silent.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln::ops::Ops;
#[cfg(feature = "cuda")]
use kiln::runtime::collective::{nccl_link_dir, timeout_from_env, NcclCommunicator};
use kiln::runtime::collective::{Communicator, DistEnv, Rendezvous};
use kiln::runtime::Device;

/// How this `kiln train` process runs.
pub enum Role {
    /// Alone, as before.
    Single,
    /// The launcher of `--gpus N` ranks.
    Launcher(usize),
    /// One rank of a run started by a launcher.
    Rank(DistEnv),
}

/// Decides the role from `--gpus`, `--device` and the environment, refusing what cannot work.
pub fn role(gpus: Option<usize>, device: Option<&str>) -> Result<Role, String> {
    let env = DistEnv::from_env().map_err(|e| e.to_string())?;
    let cpu = device == Some("cpu");
    if let Some(env) = env.filter(|e| e.world_size > 1) {
        if let Some(n) = gpus.filter(|&n| n != env.world_size) {
            return Err(format!(
                "--gpus {n} in a process of a run of WORLD_SIZE={} (started by a launcher: \
                 drop --gpus, or run it without the launcher's environment)",
                env.world_size
            ));
        }
        if cpu {
            return Err(data_parallel_on_cpu());
        }
        if let Some(d) = device.filter(|&d| d != "cuda") {
            return Err(format!(
                "--device {d} in a data-parallel run: each rank trains on cuda:LOCAL_RANK \
                 (LOCAL_RANK={} here); use --device cuda or leave it out",
                env.local_rank
            ));
        }
        return Ok(Role::Rank(env));
    }
    match gpus {
        None => Ok(Role::Single),
        Some(0) => Err(
            "--gpus 0: a run needs at least one GPU (leave --gpus out to train in one process)"
                .into(),
        ),
        Some(_) if cpu => Err(data_parallel_on_cpu()),
        // One GPU: this process trains on it (the caller picks `cuda` unless --device says).
        Some(1) => Ok(Role::Single),
        Some(n) => {
            let count = Device::cuda_count().map_err(|e| format!("--gpus {n}: {e}"))?;
            if n > count {
                return Err(format!(
                    "--gpus {n}: this machine has {count} CUDA device(s) (several hosts: start \
                     one process per GPU with torchrun or srun instead; see docs/TRAINING.md)"
                ));
            }
            if device.is_some_and(|d| d != "cuda") {
                return Err(format!(
                    "--gpus {n} uses cuda:0 .. cuda:{}; --device can only be cuda with it",
                    n - 1
                ));
            }
            Ok(Role::Launcher(n))
        }
    }
}

fn data_parallel_on_cpu() -> String {
    "data-parallel training runs on CUDA GPUs (its collectives are NCCL's); on the CPU train in \
     one process (without --gpus or a launcher's WORLD_SIZE)"
        .into()
}

/// A rank's part of the run: the meeting (kept for its heartbeat) and the communicator.
pub struct Rank {
    pub env: DistEnv,
    pub meeting: Rendezvous,
    pub comm: Arc<dyn Communicator>,
}

impl Rank {
    /// Tells the other ranks this one failed, so they stop at once rather than after a
    /// timeout; returns `message`.
    pub fn fail(&self, message: String) -> String {
        self.meeting.abort(&message);
        message
    }
}

/// Joins the run of `env`: opens `cuda:LOCAL_RANK`, meets the other ranks and makes the NCCL
/// communicator. From then on a failed peer ends this process with an error (its main thread
/// may be waiting on collectives that will never complete).
#[cfg(not(feature = "cuda"))]
pub fn join(env: DistEnv) -> Result<(Arc<Ops>, Rank), String> {
    Err(format!(
        "rank {} of {}: this kiln was built without CUDA, which data-parallel training needs",
        env.rank, env.world_size
    ))
}

/// Joins the run of `env` (see the CUDA build's documentation).
#[cfg(feature = "cuda")]
pub fn join(env: DistEnv) -> Result<(Arc<Ops>, Rank), String> {
    let what = format!("rank {} of {}", env.rank, env.world_size);
    let timeout = timeout_from_env().map_err(|e| e.to_string())?;
    // Said up front: a stray WORLD_SIZE in the environment would otherwise wait in silence.
    eprintln!(
        "{what}: meeting the other ranks at {} (for up to {:.0} s)",
        env.master(),
        timeout.as_secs_f64()
    );
    // The ranks meet first, so that one that cannot open its GPU stops the others at once.
    let (meeting, id) = Rendezvous::start(&env, NcclCommunicator::unique_id, timeout)
        .map_err(|e| format!("{what}: {e}"))?;
    let opened = Device::cuda(env.local_rank)
        .map_err(|e| format!("{what}: cuda:{} (LOCAL_RANK): {e}", env.local_rank))
        .and_then(|device| {
            NcclCommunicator::new(&device, env.rank, env.world_size, &id, timeout)
                .map(|comm| (device, comm))
                .map_err(|e| format!("{what}: {e}"))
        });
    let (device, comm) = match opened {
        Ok(opened) => opened,
        Err(message) => {
            meeting.abort(&message);
            return Err(message);
        }
    };
    let rank = env.rank;
    meeting.watch().on_failure(move |reason| {
        eprintln!("error: rank {rank} stops: {reason}");
        std::process::exit(1);
    });
    let ops = Arc::new(Ops::new(device));
    Ok((
        ops,
        Rank {
            env,
            meeting,
            comm: Arc::new(comm),
        },
    ))
}

/// How long the other ranks may take to exit by themselves after one failed.
const GRACE: Duration = Duration::from_secs(10);

/// Runs `kiln train` with the same arguments as `n` ranks on this host's first `n` GPUs and
/// waits for them. Exits the process with the first failing rank's code.
pub fn launch(n: usize) -> Result<String, String> {
    let exe = std::env::current_exe().map_err(|e| format!("--gpus: {e}"))?;
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("--gpus: no free port for the rendezvous: {e}"))?;
    #[allow(unused_mut)]
    let mut library_path = std::env::var_os("LD_LIBRARY_PATH").unwrap_or_default();
    #[cfg(feature = "cuda")]
    if let Ok(Some(dir)) = nccl_link_dir() {
        let mut paths = vec![dir];
        paths.extend(std::env::split_paths(&library_path));
        library_path = std::env::join_paths(paths).map_err(|e| format!("--gpus: {e}"))?;
    }
    // The terminal's Ctrl-C reaches every rank (one process group): the launcher only waits
    // for their checkpoint and exit (passing it on would be a second signal, which makes a
    // rank exit at once). A SIGTERM sent to the launcher is passed on.
    let interrupted = Arc::new(AtomicBool::new(false));
    let signalled = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, interrupted)
        .and_then(|_| signal_hook::flag::register(signal_hook::consts::SIGTERM, signalled.clone()))
        .map_err(|e| format!("cannot handle signals: {e}"))?;
    let mut children: Vec<Child> = vec![];
    let mut forwarders = vec![];
    for rank in 0..n {
        let mut command = Command::new(&exe);
        command
            .args(&args)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", n.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env("LD_LIBRARY_PATH", &library_path);
        if rank > 0 {
            command.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        let mut child = match command.spawn() {
            Ok(c) => c,
            Err(e) => {
                stop(&mut children);
                return Err(format!("--gpus: cannot start rank {rank}: {e}"));
            }
        };
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            forwarders.push(std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    eprintln!("[rank {rank}] {line}");
                }
            }));
        }
        children.push(child);
    }
    let mut codes: Vec<Option<i32>> = vec![None; n];
    let mut first_failure: Option<(usize, i32)> = None;
    let mut deadline: Option<Instant> = None;
    let mut forwarded_signal = false;
    while codes.iter().any(Option::is_none) {
        if signalled.load(Ordering::SeqCst) && !forwarded_signal {
            forwarded_signal = true;
            for (rank, child) in children.iter().enumerate() {
                if codes[rank].is_none() {
                    terminate(child);
                }
            }
        }
        for (rank, child) in children.iter_mut().enumerate() {
            if codes[rank].is_some() {
                continue;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let code = status.code().unwrap_or(1);
                codes[rank] = Some(code);
                if code != 0 && first_failure.is_none() {
                    first_failure = Some((rank, code));
                    deadline = Some(Instant::now() + GRACE);
                }
            }
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            stop(&mut children);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for f in forwarders {
        let _ = f.join();
    }
    match first_failure {
        None => Ok(String::new()),
        Some((rank, code)) => {
            eprintln!("kiln train --gpus {n}: rank {rank} failed (exit code {code}); the other ranks were stopped");
            std::process::exit(code);
        }
    }
}

/// Asks a rank to finish its step, checkpoint and exit (SIGTERM), by its process id.
fn terminate(child: &Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Kills the ranks still running.
fn stop(children: &mut [Child]) {
    for child in children.iter_mut() {
        if let Ok(None) = child.try_wait() {
            let _ = child.kill();
        }
    }
}
