//! Choosing where to run: `--device auto|cpu|gpu|gpu:N|NAME`, or several
//! devices (`all-gpus`, a list such as `cpu,gpu:0`) trained data-parallel.

use std::sync::Arc;

use crate::backend::{Backend, Replica, TrainSpec};
use crate::cpu::CpuBackend;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::gpu::{AdapterSelector, GpuBackend, GpuContext};
use crate::model::Mlp;
use crate::parallel::Replicated;

/// The user's choice of device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceChoice {
    /// A hardware GPU when there is one, else the CPU. Software adapters
    /// (such as Mesa's lavapipe) are slower than the CPU path and are
    /// skipped.
    Auto,
    /// The CPU backend or predictor.
    Cpu,
    /// Any GPU adapter, software ones included.
    Gpu,
    /// The first adapter whose name contains this text (case-insensitive).
    Named(String),
    /// `gpu:N`: the adapter numbered `N` by `wgtrain devices`.
    Index(usize),
    /// `all-gpus`: one replica on every hardware adapter.
    AllGpus,
    /// `a,b,...`: one data-parallel replica per entry (each `cpu`, `gpu`,
    /// `gpu:N` or a name; an entry may repeat).
    List(Vec<DeviceChoice>),
}

impl DeviceChoice {
    /// Parse `--device`: `auto`, `cpu`, `gpu`, `gpu:N`, `all-gpus` (any
    /// case), a comma-separated list of single devices, or part of an
    /// adapter's name.
    pub fn parse(s: &str) -> Result<Self> {
        if s.contains(',') {
            let entries = s
                .split(',')
                .map(|e| {
                    let e = e.trim();
                    if e.is_empty() {
                        return Err(Error::Config(format!(
                            "device list `{s}` has an empty entry: give devices separated by single commas"
                        )));
                    }
                    let c = Self::parse_one(e)?;
                    if matches!(c, DeviceChoice::Auto | DeviceChoice::AllGpus) {
                        return Err(Error::Config(format!(
                            "device list `{s}`: `{e}` cannot be part of a list; name each device (cpu, gpu, gpu:N)"
                        )));
                    }
                    Ok(c)
                })
                .collect::<Result<Vec<_>>>()?;
            return Ok(DeviceChoice::List(entries));
        }
        Self::parse_one(s.trim())
    }

    fn parse_one(s: &str) -> Result<Self> {
        let lower = s.to_ascii_lowercase();
        Ok(match lower.as_str() {
            "" => {
                return Err(Error::Config(
                    "an empty --device: give auto, cpu, gpu, gpu:N or a list".into(),
                ))
            }
            "auto" => DeviceChoice::Auto,
            "cpu" => DeviceChoice::Cpu,
            "gpu" => DeviceChoice::Gpu,
            "all-gpus" => DeviceChoice::AllGpus,
            _ => match lower.strip_prefix("gpu:") {
                Some(n) => DeviceChoice::Index(n.parse().map_err(|_| {
                    Error::Config(format!(
                        "device `{s}`: expected gpu:N with N an adapter's number as `wgtrain devices` prints it"
                    ))
                })?),
                None => DeviceChoice::Named(s.to_string()),
            },
        })
    }

    /// Whether this names several devices (data-parallel training).
    pub fn is_several(&self) -> bool {
        matches!(self, DeviceChoice::List(_) | DeviceChoice::AllGpus)
    }
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        DeviceChoice::parse(s).map_err(|e| e.to_string())
    }
}

/// Open the chosen device: a GPU context, or `None` for the CPU. With
/// `Auto`, failing to find a hardware GPU is not an error.
pub fn open_gpu(choice: &DeviceChoice) -> Result<Option<Arc<GpuContext>>> {
    let sel = match choice {
        DeviceChoice::Cpu => return Ok(None),
        DeviceChoice::Auto => AdapterSelector::Hardware,
        DeviceChoice::Gpu => AdapterSelector::Any,
        DeviceChoice::Named(n) => AdapterSelector::Named(n.clone()),
        DeviceChoice::Index(i) => AdapterSelector::Index(*i),
        DeviceChoice::List(_) | DeviceChoice::AllGpus => {
            return Err(Error::Config(
                "several devices train data-parallel; this command runs on one device".into(),
            ))
        }
    };
    match GpuContext::open(&sel) {
        Ok(ctx) => Ok(Some(Arc::new(ctx))),
        Err(e) if *choice == DeviceChoice::Auto => {
            log::info!("no hardware GPU ({e}); using the CPU");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Build an inference predictor for a device choice: the GPU predictor on a
/// GPU, else the CPU one (`threads` workers, spinning `spin` before parking).
pub fn open_predictor(
    choice: &DeviceChoice,
    model: &crate::model::AnyModel,
    max_batch: usize,
    threads: usize,
    spin: std::time::Duration,
) -> Result<Box<dyn crate::infer::Predictor>> {
    Ok(match open_gpu(choice)? {
        Some(ctx) => Box::new(crate::gpu::GpuPredictor::for_model(ctx, model, max_batch)?),
        None => crate::infer::cpu_predictor(model, max_batch, threads, spin)?,
    })
}

/// Build the training backend for a device choice; a CPU one on `threads`
/// threads (0: one per core). A device list gives a [`Replicated`] backend
/// with equal shards.
pub fn open_backend(
    choice: &DeviceChoice,
    threads: usize,
    model: Mlp,
    data: Arc<Dataset>,
    spec: TrainSpec,
) -> Result<Box<dyn Backend>> {
    open_training(choice, threads, None, model, data, spec)
}

/// [`open_backend`] with the shard weights of a device list (one per
/// device; `None`: equal). A single device is the plain backend, exactly as
/// without a list. Each CPU replica of a list runs on `threads` threads, or
/// with 0 on the cores divided among the CPU replicas (at least one each).
pub fn open_training(
    choice: &DeviceChoice,
    threads: usize,
    weights: Option<&[f64]>,
    model: Mlp,
    data: Arc<Dataset>,
    spec: TrainSpec,
) -> Result<Box<dyn Backend>> {
    let entries = match choice {
        DeviceChoice::List(entries) => entries.clone(),
        DeviceChoice::AllGpus => all_gpus()?,
        single => {
            if weights.is_some() {
                return Err(Error::Config(
                    "shard weights need several devices (a --device list such as cpu,gpu:0)".into(),
                ));
            }
            return Ok(match open_gpu(single)? {
                Some(ctx) => Box::new(GpuBackend::new(ctx, model, data, spec)?),
                None => Box::new(CpuBackend::with_threads(model, data, spec, threads)?),
            });
        }
    };
    if entries.len() == 1 && weights.is_none() {
        return open_training(&entries[0], threads, None, model, data, spec);
    }
    let weights = match weights {
        Some(w) => w.to_vec(),
        None => vec![1.0; entries.len()],
    };
    crate::parallel::check_weights(&weights, entries.len())?;
    let replicas = open_replicas(&entries, threads, model, data, spec)?;
    Ok(Box::new(Replicated::with_weights(replicas, weights)?))
}

/// The single devices a list names (`all-gpus` expanded).
pub fn list_entries(choice: &DeviceChoice) -> Result<Vec<DeviceChoice>> {
    Ok(match choice {
        DeviceChoice::List(entries) => entries.clone(),
        DeviceChoice::AllGpus => all_gpus()?,
        single => vec![single.clone()],
    })
}

/// Builds the training backends of several runs on one device (the trials
/// of a study): CPU backends of `threads` threads each, or GPU backends
/// sharing one device, whose submissions interleave in its queue.
pub struct BackendMaker {
    gpu: Option<Arc<GpuContext>>,
    threads: usize,
}

impl BackendMaker {
    /// Open the chosen device once.
    pub fn open(choice: &DeviceChoice, threads: usize) -> Result<Self> {
        Ok(BackendMaker {
            gpu: open_gpu(choice)?,
            threads,
        })
    }

    /// Whether the backends run on a GPU.
    pub fn is_gpu(&self) -> bool {
        self.gpu.is_some()
    }

    /// A backend for one run.
    pub fn make(&self, model: Mlp, data: Arc<Dataset>, spec: TrainSpec) -> Result<Box<dyn Backend>> {
        Ok(match &self.gpu {
            Some(ctx) => Box::new(GpuBackend::new(ctx.clone(), model, data, spec)?),
            None => Box::new(CpuBackend::with_threads(model, data, spec, self.threads)?),
        })
    }
}

/// One replica per entry (each a single device), each starting from
/// `model`; CPU replicas on `threads` threads each, or with 0 on the cores
/// divided among them (at least one each).
pub fn open_replicas(
    entries: &[DeviceChoice],
    threads: usize,
    model: Mlp,
    data: Arc<Dataset>,
    spec: TrainSpec,
) -> Result<Vec<Box<dyn Replica>>> {
    let cpus = entries.iter().filter(|e| **e == DeviceChoice::Cpu).count();
    let cpu_threads = match threads {
        0 => (crate::cpu::cores() / cpus.max(1)).max(1),
        t => t,
    };
    let mut replicas: Vec<Box<dyn Replica>> = Vec::with_capacity(entries.len());
    for e in entries {
        if e.is_several() {
            return Err(Error::Config("a replica is one device".into()));
        }
        replicas.push(match open_gpu(e)? {
            Some(ctx) => gpu_replica(ctx, model.clone(), data.clone(), spec)?,
            None => Box::new(CpuBackend::with_threads(
                model.clone(),
                data.clone(),
                spec,
                cpu_threads,
            )?),
        });
    }
    Ok(replicas)
}

/// `all-gpus`: every hardware adapter, as `gpu:N` entries.
fn all_gpus() -> Result<Vec<DeviceChoice>> {
    let found: Vec<DeviceChoice> = crate::gpu::list_adapters()
        .iter()
        .enumerate()
        .filter(|(_, a)| a.device_type != "Cpu")
        .map(|(i, _)| DeviceChoice::Index(i))
        .collect();
    if found.is_empty() {
        return Err(Error::Config(
            "all-gpus: no hardware GPU adapter (software adapters such as lavapipe count only when named, as gpu:N)"
                .into(),
        ));
    }
    Ok(found)
}

/// A GPU backend as a data-parallel replica.
fn gpu_replica(ctx: Arc<GpuContext>, model: Mlp, data: Arc<Dataset>, spec: TrainSpec) -> Result<Box<dyn Replica>> {
    Ok(Box::new(GpuBackend::new_replica(ctx, model, data, spec)?))
}

/// The device of rank `local_rank` on its machine in a distributed run:
/// `cpu`, or the adapter at `local_rank` modulo those the choice admits
/// (`auto` and `all-gpus`: the hardware adapters, `auto` falling back to the
/// CPU without one; `gpu`: every adapter; a list: its entry at `local_rank`
/// modulo its length); `gpu:N` and a name pick the same adapter on every
/// rank.
pub fn rank_device(choice: &DeviceChoice, local_rank: usize) -> Result<DeviceChoice> {
    // Adapters are probed only for the choices that need them.
    let pick = |hardware_only: bool| -> Option<DeviceChoice> {
        let found: Vec<usize> = crate::gpu::list_adapters()
            .iter()
            .enumerate()
            .filter(|(_, a)| !hardware_only || a.device_type != "Cpu")
            .map(|(i, _)| i)
            .collect();
        (!found.is_empty()).then(|| DeviceChoice::Index(found[local_rank % found.len()]))
    };
    Ok(match choice {
        DeviceChoice::Auto => pick(true).unwrap_or(DeviceChoice::Cpu),
        DeviceChoice::AllGpus => pick(true).ok_or_else(|| Error::Config("all-gpus: no hardware GPU adapter".into()))?,
        DeviceChoice::Gpu => pick(false).ok_or_else(|| Error::Config("gpu: no GPU adapter".into()))?,
        DeviceChoice::List(entries) => rank_device(&entries[local_rank % entries.len()], 0)?,
        single => single.clone(),
    })
}

/// One data-parallel replica (a rank of a distributed run) on
/// [`rank_device`]'s device; on the CPU with `threads` threads.
pub fn open_replica(
    choice: &DeviceChoice,
    threads: usize,
    local_rank: usize,
    model: Mlp,
    data: Arc<Dataset>,
    spec: TrainSpec,
) -> Result<Box<dyn Replica>> {
    let device = rank_device(choice, local_rank)?;
    Ok(open_replicas(&[device], threads, model, data, spec)?.remove(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rank_takes_its_entry_of_a_list_and_a_named_device_as_given() {
        let list = DeviceChoice::parse("cpu,gpu:0,gpu:3").unwrap();
        let picked: Vec<DeviceChoice> = (0..5).map(|r| rank_device(&list, r).unwrap()).collect();
        use DeviceChoice::{Cpu, Index};
        assert_eq!(picked, [Cpu, Index(0), Index(3), Cpu, Index(0)]);
        assert_eq!(rank_device(&Cpu, 7).unwrap(), Cpu);
        assert_eq!(rank_device(&Index(2), 5).unwrap(), Index(2));
    }
}
