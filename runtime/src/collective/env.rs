//! [`DistEnv`]: where this process stands in a data-parallel run, from the environment
//! variables torchrun (and `srun` wrappers) set.

use crate::{Error, Result};

/// Overrides the port rank 0 listens on (default `MASTER_PORT`, or the port after it under
/// torchrun, whose agent serves its own store on `MASTER_PORT`).
pub const PORT_OVERRIDE: &str = "KILN_MASTER_PORT";

/// This process's place in a data-parallel run: its rank, the number of ranks, its rank on
/// this host (which GPU it drives), and rank 0's rendezvous address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DistEnv {
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
}

impl DistEnv {
    /// Reads the process's environment: `WORLD_SIZE`, `RANK`, `LOCAL_RANK`, `MASTER_ADDR`,
    /// `MASTER_PORT` (torchrun's names), with SLURM's `SLURM_NTASKS`, `SLURM_PROCID` and
    /// `SLURM_LOCALID` standing in for the first three when `WORLD_SIZE` is not set. `None`
    /// when neither world size is set: a single process.
    pub fn from_env() -> Result<Option<DistEnv>> {
        DistEnv::from_vars(|name| std::env::var(name).ok())
    }

    /// [`DistEnv::from_env`] over any source of variables (for tests).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<DistEnv>> {
        let (world_name, rank_name, local_name) = if var("WORLD_SIZE").is_some() {
            ("WORLD_SIZE", "RANK", "LOCAL_RANK")
        } else if var("SLURM_NTASKS").is_some() {
            ("SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
        } else {
            return Ok(None);
        };
        let number = |name: &str| -> Result<Option<usize>> {
            match var(name) {
                None => Ok(None),
                Some(v) => v.trim().parse::<usize>().map(Some).map_err(|_| {
                    Error::Distributed(format!("{name}={v}: expected a whole number"))
                }),
            }
        };
        let world_size = number(world_name)?.unwrap_or(0);
        if world_size == 0 {
            return Err(Error::Distributed(format!(
                "{world_name}=0: a run needs at least one rank"
            )));
        }
        let Some(rank) = number(rank_name)? else {
            return Err(Error::Distributed(format!(
                "{world_name}={world_size} is set but {rank_name} is not: every process of a \
                 data-parallel run needs its rank (torchrun and srun set both)"
            )));
        };
        if rank >= world_size {
            return Err(Error::Distributed(format!(
                "{rank_name}={rank} is not below {world_name}={world_size} (ranks count from 0)"
            )));
        }
        let local_rank = match number(local_name)? {
            Some(l) => l,
            None if world_size == 1 => 0,
            None => {
                return Err(Error::Distributed(format!(
                    "{local_name} is not set: with {world_size} ranks each needs its rank on \
                     its host, which picks its GPU"
                )))
            }
        };
        let master_addr = var("MASTER_ADDR").unwrap_or_default();
        let port = var("MASTER_PORT").unwrap_or_default();
        if world_size > 1 && (master_addr.trim().is_empty() || port.trim().is_empty()) {
            return Err(Error::Distributed(format!(
                "MASTER_ADDR and MASTER_PORT must both be set with {world_size} ranks: rank 0's \
                 host and a free TCP port where the ranks meet (torchrun sets them; under \
                 SLURM, export them from the job script)"
            )));
        }
        let master_port = if port.trim().is_empty() {
            0
        } else {
            port.trim().parse::<u16>().map_err(|_| {
                Error::Distributed(format!("MASTER_PORT={port}: expected a TCP port number"))
            })?
        };
        // torchrun's agent serves its own store on MASTER_PORT (and says so in this variable):
        // Kiln's rank 0 then listens on the next port, unless KILN_MASTER_PORT names one.
        let master_port = match var(PORT_OVERRIDE) {
            Some(p) => p.trim().parse::<u16>().map_err(|_| {
                Error::Distributed(format!("{PORT_OVERRIDE}={p}: expected a TCP port number"))
            })?,
            None if var("TORCHELASTIC_USE_AGENT_STORE").as_deref() == Some("True") => {
                master_port.checked_add(1).ok_or_else(|| {
                    Error::Distributed(format!(
                        "MASTER_PORT={master_port} is torchrun's; set {PORT_OVERRIDE} to a free \
                         port for Kiln's rendezvous"
                    ))
                })?
            }
            None => master_port,
        };
        Ok(Some(DistEnv {
            rank,
            world_size,
            local_rank,
            master_addr: master_addr.trim().to_string(),
            master_port,
        }))
    }

    /// `MASTER_ADDR:MASTER_PORT`.
    pub fn master(&self) -> String {
        format!("{}:{}", self.master_addr, self.master_port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<Option<DistEnv>> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        DistEnv::from_vars(|name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        })
    }

    const MASTER: [(&str, &str); 2] = [("MASTER_ADDR", "10.0.0.1"), ("MASTER_PORT", "29500")];

    #[test]
    fn torchrun_and_slurm_variables_are_read() {
        assert_eq!(env(&[]).unwrap(), None);
        let mut vars = vec![("WORLD_SIZE", "4"), ("RANK", "2"), ("LOCAL_RANK", "0")];
        vars.extend(MASTER);
        let e = env(&vars).unwrap().unwrap();
        assert_eq!((e.rank, e.world_size, e.local_rank), (2, 4, 0));
        assert_eq!(e.master(), "10.0.0.1:29500");
        let mut slurm = vec![
            ("SLURM_NTASKS", "2"),
            ("SLURM_PROCID", "1"),
            ("SLURM_LOCALID", "1"),
        ];
        slurm.extend(MASTER);
        let e = env(&slurm).unwrap().unwrap();
        assert_eq!((e.rank, e.world_size, e.local_rank), (1, 2, 1));
        // Under torchrun its agent's store holds MASTER_PORT: Kiln meets on the next one.
        let mut torchrun = vars.clone();
        torchrun.push(("TORCHELASTIC_USE_AGENT_STORE", "True"));
        assert_eq!(env(&torchrun).unwrap().unwrap().master_port, 29501);
        torchrun.push(("KILN_MASTER_PORT", "31000"));
        assert_eq!(env(&torchrun).unwrap().unwrap().master_port, 31000);
        // One rank needs no rendezvous address.
        let e = env(&[("WORLD_SIZE", "1"), ("RANK", "0")]).unwrap().unwrap();
        assert_eq!((e.world_size, e.local_rank), (1, 0));
    }

    #[test]
    fn bad_launch_environments_are_refused_with_the_reason() {
        let err = |vars: &[(&str, &str)]| env(vars).unwrap_err().to_string();
        let e = err(&[("WORLD_SIZE", "2")]);
        assert!(e.contains("RANK is not"), "{e}");
        let e = err(&[("WORLD_SIZE", "2"), ("RANK", "2"), ("LOCAL_RANK", "0")]);
        assert!(e.contains("RANK=2 is not below WORLD_SIZE=2"), "{e}");
        let e = err(&[("WORLD_SIZE", "0"), ("RANK", "0")]);
        assert!(e.contains("at least one rank"), "{e}");
        let e = err(&[("WORLD_SIZE", "two"), ("RANK", "0")]);
        assert!(e.contains("WORLD_SIZE=two"), "{e}");
        let e = err(&[("WORLD_SIZE", "2"), ("RANK", "1"), ("LOCAL_RANK", "1")]);
        assert!(e.contains("MASTER_ADDR and MASTER_PORT"), "{e}");
        let mut vars = vec![("WORLD_SIZE", "2"), ("RANK", "1"), ("LOCAL_RANK", "1")];
        vars.extend([("MASTER_ADDR", "h"), ("MASTER_PORT", "99999")]);
        assert!(err(&vars).contains("MASTER_PORT=99999"));
        let e = err(&[("WORLD_SIZE", "2"), ("RANK", "1")]);
        assert!(e.contains("LOCAL_RANK is not set"), "{e}");
    }
}
