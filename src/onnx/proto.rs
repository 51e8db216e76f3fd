//! The subset of the ONNX protobuf schema (`onnx.proto`, package `onnx`,
//! proto2) that an exported MLP needs, as prost messages. Every field
//! number is the one of the official schema; prost encodes them, so the
//! bytes are standard protobuf. Fields the exporter never sets are left
//! out (a reader takes a missing field as its default); `optional` scalar
//! fields are plain values, written when they are not the default, which a
//! proto2 reader reads the same way.

/// `onnx.TensorProto.DataType`: the element types the exporter writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum DataType {
    /// `UNDEFINED = 0`.
    Undefined = 0,
    /// `FLOAT = 1` (f32).
    Float = 1,
    /// `INT8 = 3`.
    Int8 = 3,
    /// `INT32 = 6`.
    Int32 = 6,
    /// `INT64 = 7`.
    Int64 = 7,
}

/// `onnx.AttributeProto.AttributeType`: the attribute kinds the exporter
/// writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum AttributeType {
    /// `UNDEFINED = 0`.
    Undefined = 0,
    /// `FLOAT = 1`.
    Float = 1,
    /// `INT = 2`.
    Int = 2,
    /// `STRING = 3`.
    String = 3,
    /// `INTS = 7`.
    Ints = 7,
}

/// `onnx.ModelProto`: the file.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelProto {
    /// `ir_version = 1`.
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    /// `producer_name = 2`.
    #[prost(string, tag = "2")]
    pub producer_name: String,
    /// `producer_version = 3`.
    #[prost(string, tag = "3")]
    pub producer_version: String,
    /// `domain = 4`.
    #[prost(string, tag = "4")]
    pub domain: String,
    /// `model_version = 5`.
    #[prost(int64, tag = "5")]
    pub model_version: i64,
    /// `doc_string = 6`.
    #[prost(string, tag = "6")]
    pub doc_string: String,
    /// `graph = 7`.
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    /// `opset_import = 8`.
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
    /// `metadata_props = 14`.
    #[prost(message, repeated, tag = "14")]
    pub metadata_props: Vec<StringStringEntryProto>,
}

/// `onnx.OperatorSetIdProto`: an operator set and its version.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OperatorSetIdProto {
    /// `domain = 1` (empty: the default `ai.onnx` domain).
    #[prost(string, tag = "1")]
    pub domain: String,
    /// `version = 2`.
    #[prost(int64, tag = "2")]
    pub version: i64,
}

/// `onnx.StringStringEntryProto`: one metadata key and value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StringStringEntryProto {
    /// `key = 1`.
    #[prost(string, tag = "1")]
    pub key: String,
    /// `value = 2`.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `onnx.GraphProto`: nodes, constant tensors, inputs and outputs.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GraphProto {
    /// `node = 1`, in topological order.
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    /// `name = 2`.
    #[prost(string, tag = "2")]
    pub name: String,
    /// `initializer = 5`: the constant tensors (weights, biases, scales).
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    /// `doc_string = 10`.
    #[prost(string, tag = "10")]
    pub doc_string: String,
    /// `input = 11`.
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    /// `output = 12`.
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
}

/// `onnx.NodeProto`: one operator application.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NodeProto {
    /// `input = 1`: value names.
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    /// `output = 2`: value names.
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    /// `name = 3`.
    #[prost(string, tag = "3")]
    pub name: String,
    /// `op_type = 4`, e.g. `Gemm`.
    #[prost(string, tag = "4")]
    pub op_type: String,
    /// `attribute = 5`.
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
    /// `domain = 7` (empty: `ai.onnx`).
    #[prost(string, tag = "7")]
    pub domain: String,
}

/// `onnx.AttributeProto`: one named attribute of a node.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AttributeProto {
    /// `name = 1`.
    #[prost(string, tag = "1")]
    pub name: String,
    /// `f = 2`.
    #[prost(float, tag = "2")]
    pub f: f32,
    /// `i = 3`.
    #[prost(int64, tag = "3")]
    pub i: i64,
    /// `s = 4` (UTF-8).
    #[prost(bytes = "vec", tag = "4")]
    pub s: Vec<u8>,
    /// `ints = 8`.
    #[prost(int64, repeated, tag = "8")]
    pub ints: Vec<i64>,
    /// `type = 20`: which of the value fields holds the value.
    #[prost(enumeration = "AttributeType", tag = "20")]
    pub r#type: i32,
}

/// `onnx.TensorProto`: a constant tensor.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorProto {
    /// `dims = 1`.
    #[prost(int64, repeated, tag = "1")]
    pub dims: Vec<i64>,
    /// `data_type = 2`.
    #[prost(enumeration = "DataType", tag = "2")]
    pub data_type: i32,
    /// `name = 8`.
    #[prost(string, tag = "8")]
    pub name: String,
    /// `raw_data = 9`: the values, little-endian, row-major.
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
}

/// `onnx.ValueInfoProto`: the name and type of a graph input or output.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueInfoProto {
    /// `name = 1`.
    #[prost(string, tag = "1")]
    pub name: String,
    /// `type = 2`.
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
    /// `doc_string = 3`.
    #[prost(string, tag = "3")]
    pub doc_string: String,
}

/// `onnx.TypeProto`: the type of a value (here always a tensor).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TypeProto {
    /// `oneof value`.
    #[prost(oneof = "type_proto::Value", tags = "1")]
    pub value: Option<type_proto::Value>,
}

/// The nested messages of [`TypeProto`].
pub mod type_proto {
    /// `onnx.TypeProto.Tensor`: element type and shape.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Tensor {
        /// `elem_type = 1` ([`super::DataType`]).
        #[prost(enumeration = "super::DataType", tag = "1")]
        pub elem_type: i32,
        /// `shape = 2`.
        #[prost(message, optional, tag = "2")]
        pub shape: Option<super::TensorShapeProto>,
    }

    /// `oneof value` of [`super::TypeProto`].
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Value {
        /// `tensor_type = 1`.
        #[prost(message, tag = "1")]
        TensorType(Tensor),
    }
}

/// `onnx.TensorShapeProto`: the dimensions of a tensor type.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShapeProto {
    /// `dim = 1`.
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<tensor_shape_proto::Dimension>,
}

/// The nested messages of [`TensorShapeProto`].
pub mod tensor_shape_proto {
    /// `onnx.TensorShapeProto.Dimension`: a fixed size or a named one.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Dimension {
        /// `oneof value`.
        #[prost(oneof = "dimension::Value", tags = "1, 2")]
        pub value: Option<dimension::Value>,
    }

    /// The `oneof` of [`Dimension`].
    pub mod dimension {
        /// `oneof value` of [`super::Dimension`].
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum Value {
            /// `dim_value = 1`: a fixed size.
            #[prost(int64, tag = "1")]
            DimValue(i64),
            /// `dim_param = 2`: a symbolic size such as `batch`.
            #[prost(string, tag = "2")]
            DimParam(String),
        }
    }
}
