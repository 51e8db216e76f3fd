//! [`AnyModel`], a model of any kind a wgtrain file holds, and
//! [`Ensemble`], several models (f32 or compressed, any architectures) with
//! one input size and one class count, whose prediction is the mean of
//! their probabilities. Each member keeps its own preprocessing. The file
//! of an ensemble is read and written by [`super::file`]; its prediction
//! runs in [`crate::infer`] and the GPU predictor.

use super::compressed::CompressedMlp;
use super::header::{shared_class_names, Header, NamesMismatch};
use super::mlp::Mlp;
use crate::error::ModelError;

/// Any model file wgtrain writes.
#[derive(Debug, Clone, PartialEq)]
pub enum AnyModel {
    /// An f32 model.
    F32(Mlp),
    /// A pruned and/or int8 model.
    Compressed(CompressedMlp),
    /// Several models whose probabilities are averaged.
    Ensemble(Ensemble),
}

impl AnyModel {
    /// Layer widths, input shape and preprocessing; `None` for an
    /// ensemble, whose members each have their own.
    pub fn header(&self) -> Option<Header> {
        match self {
            AnyModel::F32(m) => Some(m.header()),
            AnyModel::Compressed(m) => Some(m.header()),
            AnyModel::Ensemble(_) => None,
        }
    }

    /// Input values per example.
    pub fn inputs(&self) -> usize {
        match self {
            AnyModel::F32(m) => m.inputs(),
            AnyModel::Compressed(m) => m.inputs(),
            AnyModel::Ensemble(e) => e.inputs(),
        }
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        match self {
            AnyModel::F32(m) => m.classes(),
            AnyModel::Compressed(m) => m.classes(),
            AnyModel::Ensemble(e) => e.classes(),
        }
    }

    /// Shape of one input example as the model records it (may be empty).
    pub fn input_shape(&self) -> &[usize] {
        match self {
            AnyModel::F32(m) => &m.input_shape,
            AnyModel::Compressed(m) => &m.input_shape,
            AnyModel::Ensemble(e) => e.input_shape(),
        }
    }

    /// The name of each class (empty when the model has none); an
    /// ensemble's are those its members share.
    pub fn class_names(&self) -> &[String] {
        match self {
            AnyModel::F32(m) => &m.class_names,
            AnyModel::Compressed(m) => &m.class_names,
            AnyModel::Ensemble(e) => e.class_names(),
        }
    }

    /// The f32 model (dequantized for a compressed one); `None` for an
    /// ensemble, which is several models.
    pub fn to_mlp(&self) -> Option<Mlp> {
        match self {
            AnyModel::F32(m) => Some(m.clone()),
            AnyModel::Compressed(m) => Some(m.to_mlp()),
            AnyModel::Ensemble(_) => None,
        }
    }

    /// The model in words, e.g. `f32 784-500-10`, `int8 784-500-10`,
    /// `ensemble of 3 (f32 784-500-10, ...)`.
    pub fn describe(&self) -> String {
        let sizes = |s: Vec<usize>| s.iter().map(|v| v.to_string()).collect::<Vec<_>>().join("-");
        match self {
            AnyModel::F32(m) => format!("f32 {}", sizes(m.sizes())),
            AnyModel::Compressed(c) => {
                let kind = if c.is_int8() { "int8" } else { "compressed f32" };
                let sparsity = c.info.target_sparsity;
                if sparsity > 0.0 {
                    format!("{kind} {} (pruned {:.0}%)", sizes(c.sizes()), sparsity * 100.0)
                } else {
                    format!("{kind} {}", sizes(c.sizes()))
                }
            }
            AnyModel::Ensemble(e) => format!(
                "ensemble of {} ({})",
                e.members().len(),
                e.members()
                    .iter()
                    .map(|m| m.model.describe())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// One model of an [`Ensemble`] and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// An f32 or compressed model (never an ensemble).
    pub model: AnyModel,
    /// The file it was read from, for messages and the ensemble file's
    /// metadata (`mN.source`).
    pub source: String,
}

/// Several models of one input size, input shape and class count: the
/// prediction is the mean of the members' probabilities (each member's
/// softmax, then the mean), its arg-max the class, and the loss the
/// cross-entropy of the mean.
#[derive(Debug, Clone, PartialEq)]
pub struct Ensemble {
    members: Vec<Member>,
}

/// The fewest members of an ensemble.
pub const MIN_MEMBERS: usize = 2;

impl Ensemble {
    /// Check and hold `members`: at least [`MIN_MEMBERS`], none an ensemble
    /// itself, all with the first member's inputs, classes and input shape
    /// (a member that records no shape takes any), and the members with
    /// class names all with the same; a mismatch names both members and
    /// both values.
    pub fn new(members: Vec<Member>) -> Result<Self, ModelError> {
        if members.len() < MIN_MEMBERS {
            return Err(ModelError::Ensemble(format!(
                "an ensemble needs at least {MIN_MEMBERS} models, got {}",
                members.len()
            )));
        }
        for m in &members {
            if matches!(m.model, AnyModel::Ensemble(_)) {
                return Err(ModelError::Ensemble(format!(
                    "{} is an ensemble itself; ensembles do not nest (list its members instead)",
                    m.source
                )));
            }
        }
        let first = &members[0];
        for m in &members[1..] {
            let (a, b) = (&first.model, &m.model);
            if a.inputs() != b.inputs() {
                return Err(ModelError::Ensemble(format!(
                    "{} takes {} input values but {} takes {}",
                    first.source,
                    a.inputs(),
                    m.source,
                    b.inputs()
                )));
            }
            if a.classes() != b.classes() {
                return Err(ModelError::Ensemble(format!(
                    "{} has {} classes but {} has {}",
                    first.source,
                    a.classes(),
                    m.source,
                    b.classes()
                )));
            }
            let (sa, sb) = (a.input_shape(), b.input_shape());
            if !sa.is_empty() && !sb.is_empty() && sa != sb {
                return Err(ModelError::Ensemble(format!(
                    "{} has input shape {sa:?} but {} has {sb:?}",
                    first.source, m.source
                )));
            }
        }
        // The members with class names must all give the same.
        if let Err(NamesMismatch {
            first: (a, na),
            other: (b, nb),
        }) = shared_class_names(members.iter().map(|m| (m.source.as_str(), m.model.class_names())))
        {
            return Err(ModelError::Ensemble(format!(
                "{a} names its classes {na:?} but {b} names them {nb:?}; members must agree on their class names"
            )));
        }
        Ok(Ensemble { members })
    }

    /// The members, in file order (the order their probabilities are summed in).
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Input values per example, which every member shares.
    pub fn inputs(&self) -> usize {
        self.members[0].model.inputs()
    }

    /// Number of classes, which every member shares.
    pub fn classes(&self) -> usize {
        self.members[0].model.classes()
    }

    /// The class names of the members that have them (they agree; empty
    /// if none has).
    pub fn class_names(&self) -> &[String] {
        self.members
            .iter()
            .map(|m| m.model.class_names())
            .find(|n| !n.is_empty())
            .unwrap_or(&[])
    }

    /// The first input shape a member records (empty if none does).
    pub fn input_shape(&self) -> &[usize] {
        self.members
            .iter()
            .map(|m| m.model.input_shape())
            .find(|s| !s.is_empty())
            .unwrap_or(&[])
    }
}
