//! Per-channel zero points that are all the same, turned into one scalar on the ONNX graph before
//! tract sees it.
//!
//! onnxruntime's quantizers write one zero point per output channel whenever weights are quantized
//! per channel, and for symmetric int8 weights every one of them is 0. ONNX defines a per-channel
//! zero point whose values are all equal to mean the same as that scalar, but tract 0.23.9 does not
//! see it: its zero-point compensation (`compensate_zero_points`) multiplies the `[n]` zeros by the
//! activations' row sums and subtracts, then adds `k·a₀·b₀`, two element-wise passes over every i32
//! accumulator. Its simplification of uniform operands only applies when the uniform tensor is not
//! larger than the other operand, and `[1, n]` against `[m, 1]` is. all-MiniLM-L6-v2 quantized
//! dynamically with per-channel weights spent 26 % of a run in those passes (doc/INT8.md).

use tract_onnx::pb::{GraphProto, TensorProto};

/// The zero-point inputs, by operator: (operator, input positions). Not QLinearMatMul: tract's
/// import demands that its zero points have the rank of their scales, which stay per channel.
const ZERO_POINTS: &[(&str, &[usize])] = &[
    ("MatMulInteger", &[2, 3]),
    ("ConvInteger", &[2, 3]),
    ("QLinearConv", &[2, 5, 7]),
];

/// Rewires every zero-point input of the operators above that is an initializer with more than one
/// element, all equal, to a new scalar initializer of that value. Other readers of the initializer
/// (a DequantizeLinear, whose zero point must match its scale's shape) keep the original.
///
/// # Returns
/// One line for the load log when anything changed.
pub fn to_scalars(graph: &mut GraphProto) -> Vec<String> {
    let mut scalars: Vec<TensorProto> = Vec::new();
    let mut rewired = 0usize;
    for ix in 0..graph.node.len() {
        let node = &graph.node[ix];
        let Some((_, slots)) = ZERO_POINTS
            .iter()
            .find(|(op, _)| node.domain.is_empty() && node.op_type == *op)
        else {
            continue;
        };
        for &slot in *slots {
            let Some(name) = graph.node[ix].input.get(slot).filter(|n| !n.is_empty()) else {
                continue;
            };
            let scalar_name = format!("{name}.as_scalar");
            if taken(graph, &scalar_name) {
                continue;
            }
            if !scalars.iter().any(|s| s.name == scalar_name) {
                let Some(scalar) = graph
                    .initializer
                    .iter()
                    .find(|t| &t.name == name)
                    .and_then(uniform_scalar)
                else {
                    continue;
                };
                scalars.push(TensorProto {
                    name: scalar_name.clone(),
                    ..scalar
                });
            }
            graph.node[ix].input[slot] = scalar_name;
            rewired += 1;
        }
    }
    if rewired == 0 {
        return Vec::new();
    }
    let count = scalars.len();
    graph.initializer.extend(scalars);
    vec![format!(
        "read {rewired} per-channel zero points whose values are all equal ({count} tensors) as \
         scalars (tract 0.23.9 would compensate them element by element)"
    )]
}

/// Whether the graph already has a value called `name` (not one this module added).
fn taken(graph: &GraphProto, name: &str) -> bool {
    graph.initializer.iter().any(|t| t.name == name)
        || graph.input.iter().any(|i| i.name == name)
        || graph
            .node
            .iter()
            .any(|n| n.output.iter().any(|o| o == name))
}

/// `t` as a rank-0 tensor when it holds more than one element, all equal, as many as its dimensions
/// say; `None` otherwise, and for data kept outside the file or in a layout not read here (zero
/// points are 8-bit or 32-bit integers, stored raw or in `int32_data`).
fn uniform_scalar(t: &TensorProto) -> Option<TensorProto> {
    let count = t
        .dims
        .iter()
        .try_fold(1i64, |n, &d| (d >= 0).then(|| n.checked_mul(d)).flatten())?;
    if !t.external_data.is_empty() || count < 2 {
        return None;
    }
    let mut scalar = TensorProto {
        dims: Vec::new(),
        data_type: t.data_type,
        ..TensorProto::default()
    };
    if !t.raw_data.is_empty() {
        let width = match t.data_type {
            2 | 3 => 1, // UINT8, INT8
            6 => 4,     // INT32
            _ => return None,
        };
        let first = t.raw_data.get(..width)?;
        if i64::try_from(t.raw_data.len() / width).ok() != Some(count)
            || t.raw_data.len() % width != 0
            || !t.raw_data.chunks(width).all(|c| c == first)
        {
            return None;
        }
        scalar.raw_data = first.to_vec();
    } else {
        let first = *t.int32_data.first()?;
        if !matches!(t.data_type, 2 | 3 | 6)
            || i64::try_from(t.int32_data.len()).ok() != Some(count)
            || t.int32_data.iter().any(|&v| v != first)
        {
            return None;
        }
        scalar.int32_data = vec![first];
    }
    Some(scalar)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::pb::NodeProto;

    fn tensor(name: &str, data_type: i32, dims: &[i64], raw: &[u8]) -> TensorProto {
        TensorProto {
            name: name.into(),
            data_type,
            dims: dims.to_vec(),
            raw_data: raw.to_vec(),
            ..TensorProto::default()
        }
    }

    fn node(op: &str, inputs: &[&str]) -> NodeProto {
        NodeProto {
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            ..NodeProto::default()
        }
    }

    #[test]
    fn uniform_zero_points_become_one_shared_scalar_and_others_stay() {
        let mut graph = GraphProto {
            node: vec![
                node("MatMulInteger", &["a", "w1", "a0", "zeros"]),
                node("MatMulInteger", &["a", "w2", "a0", "zeros"]),
                node("MatMulInteger", &["a", "w3", "a0", "mixed"]),
                node("DequantizeLinear", &["w1", "s", "zeros"]),
                node("Add", &["x", "zeros"]),
                node(
                    "QLinearMatMul",
                    &["a", "s", "a0", "w1", "scales", "zeros", "s", "a0"],
                ),
            ],
            initializer: vec![
                tensor("zeros", 3, &[4], &[0, 0, 0, 0]),
                tensor("mixed", 3, &[4], &[0, 1, 0, 0]),
                tensor("a0", 2, &[], &[7]),
                TensorProto {
                    int32_data: vec![5, 5, 5],
                    ..tensor("wide", 6, &[3], &[])
                },
            ],
            ..GraphProto::default()
        };
        let notes = to_scalars(&mut graph);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0].starts_with("read 2 per-channel zero points"),
            "{notes:?}"
        );
        assert_eq!(graph.node[0].input[3], "zeros.as_scalar");
        assert_eq!(graph.node[1].input[3], "zeros.as_scalar");
        // Not uniform; a scalar already; not a zero-point slot of a quantized product.
        assert_eq!(graph.node[2].input[3], "mixed");
        assert_eq!(graph.node[0].input[2], "a0");
        assert_eq!(graph.node[3].input[2], "zeros");
        assert_eq!(graph.node[4].input[1], "zeros");
        assert_eq!(graph.node[5].input[5], "zeros");
        let scalars: Vec<&TensorProto> = graph
            .initializer
            .iter()
            .filter(|t| t.name.ends_with(".as_scalar"))
            .collect();
        assert_eq!(scalars.len(), 1);
        assert!(scalars[0].dims.is_empty());
        assert_eq!(
            (scalars[0].data_type, &scalars[0].raw_data[..]),
            (3, &[0u8][..])
        );
        assert_eq!(
            uniform_scalar(&graph.initializer[3]).map(|t| t.int32_data),
            Some(vec![5])
        );
        // Dimensions that disagree with the data, or overflow, are left to tract to refuse.
        assert!(uniform_scalar(&tensor("short", 3, &[5], &[0, 0, 0, 0])).is_none());
        assert!(uniform_scalar(&tensor("huge", 3, &[i64::MAX, 4], &[0, 0, 0, 0])).is_none());
        assert!(uniform_scalar(&tensor("negative", 3, &[-4, -1], &[0, 0, 0, 0])).is_none());
    }

    #[test]
    fn a_name_the_graph_already_uses_is_not_overwritten() {
        let mut graph = GraphProto {
            node: vec![
                node("Identity", &["x"]),
                node("MatMulInteger", &["a", "w", "a0", "zeros"]),
            ],
            initializer: vec![tensor("zeros", 3, &[4], &[0, 0, 0, 0])],
            ..GraphProto::default()
        };
        graph.node[0].output = vec!["zeros.as_scalar".into()];
        assert!(to_scalars(&mut graph).is_empty());
        assert_eq!(graph.node[1].input[3], "zeros");
        assert_eq!(graph.initializer.len(), 1);
    }
}
