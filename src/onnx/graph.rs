//! [`GraphBuilder`]: nodes and constant tensors of an ONNX graph under
//! unique value names, so that the exporter says what it computes and not
//! how protobuf spells it.

use super::proto::{
    tensor_shape_proto::{dimension, Dimension},
    type_proto, AttributeProto, AttributeType, DataType, GraphProto, NodeProto, TensorProto, TensorShapeProto,
    TypeProto, ValueInfoProto,
};

/// One attribute of a node.
pub(crate) enum Attr {
    /// An `INT` attribute.
    Int(&'static str, i64),
    /// An `INTS` attribute.
    Ints(&'static str, Vec<i64>),
}

impl Attr {
    fn proto(self) -> AttributeProto {
        match self {
            Attr::Int(name, i) => AttributeProto {
                name: name.into(),
                i,
                r#type: AttributeType::Int as i32,
                ..Default::default()
            },
            Attr::Ints(name, ints) => AttributeProto {
                name: name.into(),
                ints,
                r#type: AttributeType::Ints as i32,
                ..Default::default()
            },
        }
    }
}

/// The nodes and initializers of a graph being built; every value gets a
/// name made unique by a counter (`prefix` + what it is + number).
#[derive(Default)]
pub(crate) struct GraphBuilder {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    count: usize,
}

impl GraphBuilder {
    fn fresh(&mut self, what: &str) -> String {
        self.count += 1;
        format!("{what}_{}", self.count)
    }

    fn tensor(&mut self, name: &str, dims: &[usize], data_type: DataType, raw_data: Vec<u8>) -> String {
        let name = self.fresh(name);
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: data_type as i32,
            name: name.clone(),
            raw_data,
        });
        name
    }

    /// A constant f32 tensor of shape `dims` (empty: a scalar), row-major.
    pub(crate) fn f32s(&mut self, name: &str, dims: &[usize], v: &[f32]) -> String {
        let raw = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.tensor(name, dims, DataType::Float, raw)
    }

    /// A constant f32 scalar.
    pub(crate) fn scalar(&mut self, name: &str, v: f32) -> String {
        self.f32s(name, &[], &[v])
    }

    /// A constant int8 tensor of shape `dims`, row-major.
    pub(crate) fn i8s(&mut self, name: &str, dims: &[usize], v: &[i8]) -> String {
        let raw = v.iter().map(|&x| x as u8).collect();
        self.tensor(name, dims, DataType::Int8, raw)
    }

    /// A constant int64 tensor of shape `dims`.
    pub(crate) fn i64s(&mut self, name: &str, dims: &[usize], v: &[i64]) -> String {
        let raw = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.tensor(name, dims, DataType::Int64, raw)
    }

    /// A node of `op` on `inputs` whose one output is named `output`.
    pub(crate) fn node_into(&mut self, op: &str, inputs: &[&str], attrs: Vec<Attr>, output: &str) -> String {
        let name = self.fresh(&format!("{op}_node"));
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.to_string()],
            name,
            op_type: op.to_string(),
            attribute: attrs.into_iter().map(Attr::proto).collect(),
            domain: String::new(),
        });
        output.to_string()
    }

    /// A node of `op` on `inputs`; its output's name, made from `what`.
    pub(crate) fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<Attr>, what: &str) -> String {
        let out = self.fresh(what);
        self.node_into(op, inputs, attrs, &out)
    }

    /// The graph named `name` with one f32 input and one f32 output, both
    /// `[batch, width]` with a symbolic batch dimension.
    pub(crate) fn finish(self, name: &str, input: (&str, usize), output: (&str, usize)) -> GraphProto {
        GraphProto {
            node: self.nodes,
            name: name.to_string(),
            initializer: self.initializers,
            doc_string: String::new(),
            input: vec![batch_value(input.0, input.1)],
            output: vec![batch_value(output.0, output.1)],
        }
    }
}

/// An f32 tensor value `[batch, width]`, `batch` symbolic.
fn batch_value(name: &str, width: usize) -> ValueInfoProto {
    let dim = |v| Dimension { value: Some(v) };
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(TensorShapeProto {
                    dim: vec![
                        dim(dimension::Value::DimParam("batch".into())),
                        dim(dimension::Value::DimValue(width as i64)),
                    ],
                }),
            })),
        }),
        doc_string: String::new(),
    }
}
