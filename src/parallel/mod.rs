//! Data-parallel training: replicas of one model that each compute the
//! gradient of part of a batch and apply the same summed update.
//!
//! [`mpi`] (the cargo feature `mpi`) runs one replica per process, across
//! machines, summing the gradients with MPI's all-reduce.

#[cfg(feature = "mpi")]
pub mod mpi;
