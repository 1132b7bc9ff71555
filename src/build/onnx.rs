//! Writes a [`Network`] as an ONNX graph that meets the model contract:
//!
//! ```text
//! image [N,3,S,S] ─► (Conv ─► Relu? ─► MaxPool?)* ─► features A [N,K,h,w]
//!   A ─► GlobalAveragePool ─► Flatten ─► Gemm(W, b, transB=1) ─► logits [N,C]
//!   A ─► Conv1x1(W/(h·w), no bias) ─► Relu ─► cam [N,C,h,w]        (closed-form Grad-CAM)
//!   A ─► Unsqueeze(1) ─► Mul(W/(h·w) as [1,C,K,1,1]) ─► Relu ─► ReduceSum(2)
//!     ─► attention [N,C,h,w]                                           (the AT+ map)
//! ```
//!
//! `cam` is standard Grad-CAM: the ReLU comes after the sum over channels. `attention` is
//! the map AT+ distils (`train::loss::attention_maps`): the ReLU is applied per channel,
//! before the sum, so channels that argue against a class cannot cancel those for it.
//!
//! BatchNorm is folded into each convolution before writing. The batch dimension is
//! symbolic (`N`); everything else is static, so the contract's checks can read the CAM
//! grid off the graph. Protobuf types come from `onnx-ir` (tracel-ai, maintained with
//! burn), so no `.proto` file is vendored here.

use std::path::Path;

use onnx_ir::{
    AttributeProto, AttributeType, GraphProto, Message, ModelProto, NodeProto, TensorProto,
    TypeProto, ValueInfoProto,
};

use crate::build::network::Network;

/// ONNX opset the graph is written against (the contract asks for 17 or later).
pub const OPSET: i64 = 17;
/// IR version matching opset 17 (ONNX 1.12).
const IR_VERSION: i64 = 8;
/// `TensorProto.DataType.FLOAT`.
const FLOAT: i32 = 1;
/// `TensorProto.DataType.INT64`.
const INT64: i32 = 7;

/// Names of the graph's input and outputs, as the manifest records them.
#[derive(Debug, Clone)]
pub struct GraphNames {
    pub input: String,
    pub logits: String,
    pub cam: String,
    pub attention: String,
}

impl Default for GraphNames {
    fn default() -> Self {
        GraphNames {
            input: "image".into(),
            logits: "logits".into(),
            cam: "cam".into(),
            attention: "attention".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("invalid network: {0}")]
    InvalidNetwork(String),
    #[error("cannot write {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot encode the ONNX protobuf: {0}")]
    Encode(String),
    #[error("cannot decode the ONNX protobuf: {0}")]
    Decode(String),
    #[error(
        "this graph was not written by slidegrade's exporter (no `{0}`), so the attention output cannot be added"
    )]
    NotOurGraph(&'static str),
}

impl WriteError {
    pub fn kind(&self) -> &'static str {
        match self {
            WriteError::InvalidNetwork(_) => "invalid_network",
            WriteError::Io { .. } => "export_io",
            WriteError::Encode(_) => "onnx_encode_failed",
            WriteError::Decode(_) => "invalid_onnx",
            WriteError::NotOurGraph(_) => "unsupported_graph",
        }
    }
}

/// Builds the ONNX model for `net` (BatchNorm folded).
pub fn to_model(
    net: &Network,
    names: &GraphNames,
    model_name: &str,
) -> Result<ModelProto, WriteError> {
    net.validate().map_err(WriteError::InvalidNetwork)?;
    let net = net.folded();
    let s = net.input_size as i64;
    let classes = net.classes() as i64;
    let grid = net.cam_grid() as i64;
    let k = net.feature_channels() as i64;

    let mut graph = GraphProto::new();
    graph.name = model_name.to_string();
    graph
        .input
        .push(value_info(&names.input, &[None, Some(3), Some(s), Some(s)]));
    graph
        .output
        .push(value_info(&names.logits, &[None, Some(classes)]));
    graph.output.push(value_info(
        &names.cam,
        &[None, Some(classes), Some(grid), Some(grid)],
    ));

    let mut x = names.input.clone();
    for (i, block) in net.blocks.iter().enumerate() {
        let (w, b) = (format!("conv{i}.weight"), format!("conv{i}.bias"));
        let kk = block.kernel as i64;
        graph.initializer.push(tensor(
            &w,
            &[block.out_channels as i64, block.in_channels as i64, kk, kk],
            &block.weight,
        ));
        graph
            .initializer
            .push(tensor(&b, &[block.out_channels as i64], &block.bias));
        let pad = kk / 2;
        let conv_out = format!("conv{i}");
        graph.node.push(node(
            "Conv",
            &[&x, &w, &b],
            &conv_out,
            vec![
                ints("kernel_shape", &[kk, kk]),
                ints("pads", &[pad, pad, pad, pad]),
                ints("strides", &[1, 1]),
            ],
        ));
        x = conv_out;
        if block.relu {
            let out = format!("relu{i}");
            graph.node.push(node("Relu", &[&x], &out, vec![]));
            x = out;
        }
        if block.max_pool {
            let out = format!("pool{i}");
            graph.node.push(node(
                "MaxPool",
                &[&x],
                &out,
                vec![ints("kernel_shape", &[2, 2]), ints("strides", &[2, 2])],
            ));
            x = out;
        }
    }
    let features = x;

    // Classification head: GAP + Flatten + Gemm.
    graph
        .initializer
        .push(tensor("fc.weight", &[classes, k], &net.classifier.weight));
    graph
        .initializer
        .push(tensor("fc.bias", &[classes], &net.classifier.bias));
    graph
        .node
        .push(node("GlobalAveragePool", &[&features], "gap", vec![]));
    graph
        .node
        .push(node("Flatten", &["gap"], "flat", vec![int("axis", 1)]));
    graph.node.push(node(
        "Gemm",
        &["flat", "fc.weight", "fc.bias"],
        &names.logits,
        vec![int("transB", 1)],
    ));

    // Grad-CAM head: α_ck = W_ck/(h·w) as a bias-free 1×1 convolution, then ReLU.
    let area = (grid * grid) as f32;
    let alpha: Vec<f32> = net.classifier.weight.iter().map(|w| w / area).collect();
    graph
        .initializer
        .push(tensor("cam.alpha", &[classes, k, 1, 1], &alpha));
    graph.node.push(node(
        "Conv",
        &[&features, "cam.alpha"],
        "cam_linear",
        vec![ints("kernel_shape", &[1, 1])],
    ));
    graph
        .node
        .push(node("Relu", &["cam_linear"], &names.cam, vec![]));
    add_attention(&mut graph, &features, classes, k, grid, &names.attention);

    let mut model = ModelProto::new();
    model.ir_version = IR_VERSION;
    model.producer_name = "slidegrade".into();
    model.producer_version = env!("CARGO_PKG_VERSION").into();
    model.opset_import.push(Default::default());
    if let Some(opset) = model.opset_import.last_mut() {
        opset.domain = String::new();
        opset.version = OPSET;
    }
    model.graph = Some(graph).into();
    Ok(model)
}

/// Appends the AT+ map head (see the module docs) to `graph`, reading the features `A`
/// and reusing the Grad-CAM weights `cam.alpha` (`[C, K, 1, 1]`, W/(h·w)).
fn add_attention(
    graph: &mut GraphProto,
    features: &str,
    classes: i64,
    k: i64,
    grid: i64,
    name: &str,
) {
    let Some(alpha) = graph.initializer.iter().find(|t| t.name == "cam.alpha") else {
        return;
    };
    let mut alpha = alpha.clone();
    alpha.name = "attention.alpha".into();
    alpha.dims = vec![1, classes, k, 1, 1];
    graph.initializer.push(alpha);
    let mut axes = TensorProto::new();
    axes.name = "attention.axes_channel".into();
    axes.dims = vec![1];
    axes.data_type = INT64;
    axes.int64_data = vec![1];
    graph.initializer.push(axes.clone());
    axes.name = "attention.axes_sum".into();
    axes.int64_data = vec![2];
    graph.initializer.push(axes);
    graph.node.push(node(
        "Unsqueeze",
        &[features, "attention.axes_channel"],
        "attention_features",
        vec![],
    ));
    graph.node.push(node(
        "Mul",
        &["attention_features", "attention.alpha"],
        "attention_terms",
        vec![],
    ));
    graph.node.push(node(
        "Relu",
        &["attention_terms"],
        "attention_positive",
        vec![],
    ));
    graph.node.push(node(
        "ReduceSum",
        &["attention_positive", "attention.axes_sum"],
        name,
        vec![int("keepdims", 0)],
    ));
    graph.output.push(value_info(
        name,
        &[None, Some(classes), Some(grid), Some(grid)],
    ));
}

/// Adds the `attention` output to a model this exporter wrote before it had one (the
/// graph must hold `cam.alpha` and the `cam_linear` convolution). Returns the new bytes,
/// or `None` when the graph already has an output of that name.
pub fn with_attention(onnx: &[u8], name: &str) -> Result<Option<Vec<u8>>, WriteError> {
    let mut model =
        ModelProto::parse_from_bytes(onnx).map_err(|e| WriteError::Decode(e.to_string()))?;
    let graph = model.graph.mut_or_insert_default();
    if graph.output.iter().any(|o| o.name == name) {
        return Ok(None);
    }
    let features = graph
        .node
        .iter()
        .find(|n| n.output.first().is_some_and(|o| o == "cam_linear"))
        .and_then(|n| n.input.first().cloned())
        .ok_or(WriteError::NotOurGraph("cam_linear"))?;
    let dims = graph
        .initializer
        .iter()
        .find(|t| t.name == "cam.alpha")
        .map(|t| t.dims.clone())
        .ok_or(WriteError::NotOurGraph("cam.alpha"))?;
    let grid = graph
        .output
        .iter()
        .find(|o| o.name != name && o.name.contains("cam"))
        .and_then(|o| {
            let dim = o.type_.tensor_type().shape.dim.get(2)?;
            dim.has_dim_value().then(|| dim.dim_value())
        })
        .ok_or(WriteError::NotOurGraph("a cam output of static size"))?;
    let (classes, k) = (dims[0], dims[1]);
    add_attention(graph, &features, classes, k, grid, name);
    model
        .write_to_bytes()
        .map(Some)
        .map_err(|e| WriteError::Encode(e.to_string()))
}

/// Serialises the model for `net` to bytes.
pub fn to_bytes(
    net: &Network,
    names: &GraphNames,
    model_name: &str,
) -> Result<Vec<u8>, WriteError> {
    to_model(net, names, model_name)?
        .write_to_bytes()
        .map_err(|e| WriteError::Encode(e.to_string()))
}

/// Writes the model for `net` to `path` atomically (temp file, then rename), so a reader
/// never sees half a model.
pub fn write(
    net: &Network,
    names: &GraphNames,
    model_name: &str,
    path: &Path,
) -> Result<Vec<u8>, WriteError> {
    let bytes = to_bytes(net, names, model_name)?;
    let io = |source| WriteError::Io {
        path: path.display().to_string(),
        source,
    };
    let tmp = path.with_extension("onnx.part");
    std::fs::write(&tmp, &bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(bytes)
}

fn value_info(name: &str, dims: &[Option<i64>]) -> ValueInfoProto {
    let mut ty = TypeProto::new();
    let tensor_type = ty.mut_tensor_type();
    tensor_type.elem_type = FLOAT;
    let shape = tensor_type.shape.mut_or_insert_default();
    for dim in dims {
        shape.dim.push(Default::default());
        if let Some(last) = shape.dim.last_mut() {
            match dim {
                Some(v) => last.set_dim_value(*v),
                None => last.set_dim_param("N".into()),
            }
        }
    }
    let mut info = ValueInfoProto::new();
    info.name = name.to_string();
    info.type_ = Some(ty).into();
    info
}

fn tensor(name: &str, dims: &[i64], data: &[f32]) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.to_string();
    t.dims = dims.to_vec();
    t.data_type = FLOAT;
    t.float_data = data.to_vec();
    t
}

fn node(op: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) -> NodeProto {
    let mut n = NodeProto::new();
    n.op_type = op.to_string();
    n.name = format!("{op}:{output}");
    n.input = inputs.iter().map(|s| s.to_string()).collect();
    n.output = vec![output.to_string()];
    n.attribute = attribute;
    n
}

fn ints(name: &str, values: &[i64]) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.to_string();
    a.type_ = AttributeType::INTS.into();
    a.ints = values.to_vec();
    a
}

fn int(name: &str, value: i64) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.to_string();
    a.type_ = AttributeType::INT.into();
    a.i = value;
    a
}
