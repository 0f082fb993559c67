//! Graphs that tract 0.23.9 computes wrongly without an error, repaired on the ONNX graph before
//! tract sees it, or refused with a message that says what to do.
//!
//! Two traps are known (issue #8; `tests/fixtures/traps/` holds a minimal model of each, with
//! onnxruntime's outputs):
//!
//! - **A quantized Softmax.** tract's `DequantizeLinear` declutter walks the chain of single-consumer
//!   operators after it and, when the chain ends in a `QuantizeLinear`, folds the whole chain into a
//!   256-entry lookup table, on the assumption that every operator on the way is element-wise. Softmax
//!   (and LogSoftmax, Hardmax) normalise across an axis, so the table is wrong: every probability
//!   comes out as 1.0. onnxruntime's QDQ quantizer writes exactly this chain for classifier heads and
//!   attention. The repair removes the `QuantizeLinear → DequantizeLinear` pair after the Softmax, so
//!   the chain no longer ends in a quantization and the Softmax runs in float: outputs then differ from
//!   onnxruntime's by at most the rounding that pair applied (half a quantization step). When the pair
//!   cannot be removed (the quantized tensor is a graph output, or feeds something other than a
//!   matching `DequantizeLinear`), the model is refused.
//! - **A binary tree-ensemble classifier.** tract's `TreeEnsembleClassifier` returns a wrong `label`
//!   when there are two classes (its probabilities are right). The repair recomputes the label from
//!   the probabilities, as `Gather(class labels, ArgMax(probabilities))`, which is how onnxruntime
//!   defines it (ties go to the first class in both).
//!
//! Only the top-level graph is inspected: tract serves no model here whose subgraphs quantize.

use std::collections::{HashMap, HashSet};

use tract_onnx::pb::{attribute_proto::AttributeType, AttributeProto, GraphProto, NodeProto};
use tract_onnx::pb::{tensor_proto::DataType, TensorProto};

/// Operators that normalise across an axis and that tract nevertheless folds as if element-wise.
const ACROSS_AXIS: &[&str] = &["Softmax", "LogSoftmax", "Hardmax"];

/// One-input operators that are element-wise, which tract's fold walks through.
const ELEMENT_WISE: &[&str] = &[
    "Abs",
    "Ceil",
    "Celu",
    "Clip",
    "Cos",
    "Elu",
    "Erf",
    "Exp",
    "Floor",
    "Gelu",
    "HardSigmoid",
    "HardSwish",
    "Identity",
    "LeakyRelu",
    "Log",
    "Mish",
    "Neg",
    "Reciprocal",
    "Relu",
    "Round",
    "Selu",
    "Sigmoid",
    "Sign",
    "Sin",
    "Softplus",
    "Softsign",
    "Sqrt",
    "Tanh",
];

/// Binary operators that become element-wise once their other operand is a constant.
const WITH_CONSTANT: &[&str] = &["Add", "Sub", "Mul", "Div", "Pow", "Max", "Min"];

/// Finds and repairs the known traps in `graph`.
///
/// # Returns
/// One line per repair, for the load log.
///
/// # Errors
/// A message naming the node and the way out, when a trap cannot be repaired.
pub fn repair(graph: &mut GraphProto) -> Result<Vec<String>, String> {
    let mut notes = repair_quantized_softmax(graph)?;
    notes.extend(repair_binary_tree_labels(graph)?);
    Ok(notes)
}

/// Who reads each value, and which values are constants or graph outputs.
struct Uses {
    consumers: HashMap<String, Vec<usize>>,
    constants: HashSet<String>,
    outputs: HashSet<String>,
}

impl Uses {
    fn of(graph: &GraphProto) -> Uses {
        let mut consumers: HashMap<String, Vec<usize>> = HashMap::new();
        for (ix, node) in graph.node.iter().enumerate() {
            for input in node.input.iter().filter(|i| !i.is_empty()) {
                consumers.entry(input.clone()).or_default().push(ix);
            }
        }
        let mut constants: HashSet<String> =
            graph.initializer.iter().map(|t| t.name.clone()).collect();
        constants.extend(
            graph
                .node
                .iter()
                .filter(|n| n.op_type == "Constant")
                .flat_map(|n| n.output.iter().cloned()),
        );
        let outputs = graph.output.iter().map(|o| o.name.clone()).collect();
        Uses {
            consumers,
            constants,
            outputs,
        }
    }

    /// The one node reading `value`, if exactly one does and it is not also a graph output (tract's
    /// fold follows single successors only).
    fn single_consumer(&self, value: &str) -> Option<usize> {
        if self.outputs.contains(value) {
            return None;
        }
        match self.consumers.get(value).map(Vec::as_slice) {
            Some([only]) => Some(*only),
            _ => None,
        }
    }

    /// Whether `node`, reading `value`, acts on it element by element (as tract will see it).
    fn element_wise(&self, node: &NodeProto, value: &str) -> bool {
        if node.domain.is_empty() && ELEMENT_WISE.contains(&node.op_type.as_str()) {
            // Clip's bounds are inputs 1 and 2; the data is input 0.
            return node.input.first().is_some_and(|i| i == value);
        }
        if node.domain.is_empty() && WITH_CONSTANT.contains(&node.op_type.as_str()) {
            let others: Vec<&String> = node.input.iter().filter(|i| *i != value).collect();
            return node.input.len() == 2
                && others.len() == 1
                && others.iter().all(|o| self.constants.contains(*o));
        }
        false
    }
}

/// A `DequantizeLinear → … → QuantizeLinear` chain that tract would fold with an across-axis
/// operator inside: the index of that operator and of the closing `QuantizeLinear`.
fn find_trapped_chain(graph: &GraphProto, uses: &Uses) -> Option<(usize, usize)> {
    for (start, node) in graph.node.iter().enumerate() {
        if !(node.domain.is_empty() && node.op_type == "DequantizeLinear") {
            continue;
        }
        let mut across = None;
        let Some(mut value) = node.output.first().cloned() else {
            continue;
        };
        // Each step moves to a later node, so the walk ends; bound it anyway.
        for _ in 0..graph.node.len() {
            let Some(next) = uses.single_consumer(&value) else {
                break;
            };
            let op = &graph.node[next];
            if next == start || !op.domain.is_empty() {
                break;
            }
            if op.op_type == "QuantizeLinear" && op.input.first() == Some(&value) {
                if let Some(across) = across {
                    return Some((across, next));
                }
                break;
            }
            if ACROSS_AXIS.contains(&op.op_type.as_str()) {
                across.get_or_insert(next);
            } else if !uses.element_wise(op, &value) {
                break;
            }
            match op.output.first() {
                Some(out) if !out.is_empty() => value = out.clone(),
                _ => break,
            }
        }
    }
    None
}

fn repair_quantized_softmax(graph: &mut GraphProto) -> Result<Vec<String>, String> {
    let mut notes = Vec::new();
    // Each repair removes one QuantizeLinear, so there are at most as many as there are nodes.
    for _ in 0..=graph.node.len() {
        let uses = Uses::of(graph);
        let Some((across, quant)) = find_trapped_chain(graph, &uses) else {
            return Ok(notes);
        };
        let op = graph.node[across].op_type.clone();
        let name = node_label(&graph.node[across]);
        let q = graph.node[quant].clone();
        let quantized = q.output.first().cloned().unwrap_or_default();
        let refuse = |why: String| {
            format!(
                "{op} {name} sits between a DequantizeLinear and the QuantizeLinear {}; tract 0.23.9 \
                 would fold that chain into an element-wise lookup table and answer 1.0 for every \
                 probability, and inferd cannot repair it because {why}. Quantize the model with \
                 {op} excluded (onnxruntime quantize_static: nodes_to_exclude, or \
                 op_types_to_quantize without it) and load it again",
                node_label(&q)
            )
        };
        if uses.outputs.contains(&quantized) {
            return Err(refuse(format!(
                "the quantized tensor {quantized:?} is a graph output"
            )));
        }
        let readers = uses.consumers.get(&quantized).cloned().unwrap_or_default();
        for &reader in &readers {
            let dq = &graph.node[reader];
            if !(dq.domain.is_empty() && dq.op_type == "DequantizeLinear") {
                return Err(refuse(format!(
                    "{quantized:?} is read by {} {}, not only by a DequantizeLinear",
                    dq.op_type,
                    node_label(dq)
                )));
            }
            if dq.input.first() != Some(&quantized) || !same_quantization(graph, &q, dq) {
                return Err(refuse(format!(
                    "the DequantizeLinear {} after it does not undo it with the same scale, \
                     zero point and axis",
                    node_label(dq)
                )));
            }
        }
        let float = q.input.first().cloned().unwrap_or_default();
        let mut undone = Vec::new();
        for &reader in &readers {
            let dq = &mut graph.node[reader];
            undone.push(node_label(dq));
            dq.op_type = "Identity".into();
            dq.input = vec![float.clone()];
            dq.attribute.clear();
        }
        graph.node.remove(quant);
        notes.push(format!(
            "{op} {name}: removed QuantizeLinear {} and DequantizeLinear {} after it, so that \
             tract 0.23.9 does not fold the {op} into a lookup table (it would answer 1.0); the {op} \
             now runs in float, within half a quantization step of onnxruntime's output",
            node_label(&q),
            undone.join(", ")
        ));
    }
    Err("too many quantized Softmax repairs; the graph is not what it seems".into())
}

/// Whether `dq` dequantizes with exactly the scale, zero point and attributes `q` quantized with.
fn same_quantization(graph: &GraphProto, q: &NodeProto, dq: &NodeProto) -> bool {
    let operand =
        |node: &NodeProto, ix: usize| node.input.get(ix).filter(|name| !name.is_empty()).cloned();
    let same = |a: Option<String>, b: Option<String>| match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) if a == b => true,
        (Some(a), Some(b)) => match (initializer(graph, &a), initializer(graph, &b)) {
            (Some(a), Some(b)) => same_value(a, b),
            _ => false,
        },
        _ => false,
    };
    same(operand(q, 1), operand(dq, 1))
        && same(operand(q, 2), operand(dq, 2))
        && q.attribute
            .iter()
            .filter(|a| a.name == "axis")
            .eq(dq.attribute.iter().filter(|a| a.name == "axis"))
}

fn initializer<'g>(graph: &'g GraphProto, name: &str) -> Option<&'g TensorProto> {
    graph.initializer.iter().find(|t| t.name == name)
}

/// Two constant tensors with the same type, shape and contents (names aside).
fn same_value(a: &TensorProto, b: &TensorProto) -> bool {
    let strip = |t: &TensorProto| TensorProto {
        name: String::new(),
        doc_string: String::new(),
        ..t.clone()
    };
    strip(a) == strip(b)
}

fn repair_binary_tree_labels(graph: &mut GraphProto) -> Result<Vec<String>, String> {
    let mut notes = Vec::new();
    let mut ix = 0;
    while ix < graph.node.len() {
        let node = &graph.node[ix];
        ix += 1;
        if !(node.domain == "ai.onnx.ml" && node.op_type == "TreeEnsembleClassifier") {
            continue;
        }
        let name = node_label(node);
        if attr(node, "classlabels_strings").is_some_and(|a| a.strings.len() == 2) {
            return Err(format!(
                "TreeEnsembleClassifier {name} has two string classes: tract 0.23.9 returns a wrong \
                 label for binary classifiers and inferd can only recompute integer labels; export \
                 the classifier with integer class labels"
            ));
        }
        let Some(labels) = attr(node, "classlabels_int64s")
            .map(|a| a.ints.clone())
            .filter(|l| l.len() == 2)
        else {
            continue;
        };
        let label = node.output.first().cloned().unwrap_or_default();
        let probabilities = node.output.get(1).cloned().unwrap_or_default();
        if label.is_empty() {
            continue;
        }
        if probabilities.is_empty() {
            return Err(format!(
                "TreeEnsembleClassifier {name}: tract 0.23.9 returns a wrong label for binary \
                 classifiers, and this one does not output the probabilities inferd would compute \
                 the label from; export it with its probabilities output"
            ));
        }
        let classes = format!("{label}.inferd_classes");
        let argmax = format!("{label}.inferd_argmax");
        let unused = format!("{label}.inferd_tract_label");
        graph.initializer.push(TensorProto {
            name: classes.clone(),
            dims: vec![2],
            data_type: DataType::Int64 as i32,
            int64_data: labels,
            ..TensorProto::default()
        });
        graph.node[ix - 1].output[0] = unused;
        let argmax_node = NodeProto {
            name: argmax.clone(),
            op_type: "ArgMax".into(),
            input: vec![probabilities],
            output: vec![argmax.clone()],
            attribute: vec![int_attr("axis", 1), int_attr("keepdims", 0)],
            ..NodeProto::default()
        };
        let gather_node = NodeProto {
            name: format!("{label}.inferd_label"),
            op_type: "Gather".into(),
            input: vec![classes, argmax],
            output: vec![label.clone()],
            attribute: vec![int_attr("axis", 0)],
            ..NodeProto::default()
        };
        graph.node.insert(ix, gather_node);
        graph.node.insert(ix, argmax_node);
        ix += 2;
        notes.push(format!(
            "TreeEnsembleClassifier {name}: {label:?} recomputed as the class of the larger \
             probability, because tract 0.23.9 returns a wrong label for binary classifiers"
        ));
    }
    Ok(notes)
}

fn attr<'n>(node: &'n NodeProto, name: &str) -> Option<&'n AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

fn int_attr(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i: value,
        ..AttributeProto::default()
    }
}

/// A node's name for messages, or its first output when it has none (exporters often leave it out).
fn node_label(node: &NodeProto) -> String {
    if node.name.is_empty() {
        format!(
            "(output {:?})",
            node.output.first().map_or("", String::as_str)
        )
    } else {
        format!("{:?}", node.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::pb::ValueInfoProto;

    fn node(op: &str, inputs: &[&str], output: &str) -> NodeProto {
        NodeProto {
            op_type: op.into(),
            input: inputs.iter().map(|s| (*s).to_owned()).collect(),
            output: vec![output.into()],
            ..NodeProto::default()
        }
    }

    fn scalar(name: &str, value: f32) -> TensorProto {
        TensorProto {
            name: name.into(),
            data_type: DataType::Float as i32,
            float_data: vec![value],
            ..TensorProto::default()
        }
    }

    /// x → Q → DQ → `middle`… → Q(s) → DQ(`last_scale`) → y.
    fn chain(middle: &[&str], last_scale: &str) -> GraphProto {
        let mut nodes = vec![
            node("QuantizeLinear", &["x", "s_in"], "xq"),
            node("DequantizeLinear", &["xq", "s_in"], "v0"),
        ];
        for (ix, op) in middle.iter().enumerate() {
            let (input, output) = (format!("v{ix}"), format!("v{}", ix + 1));
            let inputs: Vec<&str> = if WITH_CONSTANT.contains(op) {
                vec![&input, "two"]
            } else {
                vec![&input]
            };
            nodes.push(node(op, &inputs, &output));
        }
        let last = format!("v{}", middle.len());
        nodes.push(node("QuantizeLinear", &[&last, "s"], "q"));
        nodes.push(node("DequantizeLinear", &["q", last_scale], "y"));
        GraphProto {
            node: nodes,
            initializer: vec![
                scalar("s_in", 0.05),
                scalar("s", 1.0 / 256.0),
                scalar("s_copy", 1.0 / 256.0),
                scalar("s_other", 1.0 / 128.0),
                scalar("two", 2.0),
            ],
            output: vec![ValueInfoProto {
                name: "y".into(),
                ..ValueInfoProto::default()
            }],
            ..GraphProto::default()
        }
    }

    fn ops(graph: &GraphProto) -> Vec<&str> {
        graph.node.iter().map(|n| n.op_type.as_str()).collect()
    }

    #[test]
    fn element_wise_chains_are_left_to_tract() {
        // tract's lookup-table fold is right for these: nothing to repair.
        let mut graph = chain(&["Relu", "Mul", "Sigmoid"], "s");
        let before = graph.clone();
        assert!(repair(&mut graph).unwrap().is_empty());
        assert_eq!(graph, before);
    }

    #[test]
    fn a_softmax_anywhere_in_the_chain_loses_its_requantization() {
        let mut graph = chain(&["Mul", "Softmax", "Relu"], "s_copy");
        let notes = repair(&mut graph).unwrap();
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert_eq!(
            ops(&graph),
            [
                "QuantizeLinear",
                "DequantizeLinear",
                "Mul",
                "Softmax",
                "Relu",
                "Identity"
            ]
        );
        // The output keeps its name and now reads the float value.
        let last = graph.node.last().unwrap();
        assert_eq!(
            (last.input[0].as_str(), last.output[0].as_str()),
            ("v3", "y")
        );
    }

    #[test]
    fn a_softmax_chain_is_refused_when_the_scales_differ() {
        let err = repair(&mut chain(&["Softmax"], "s_other")).unwrap_err();
        assert!(err.contains("same scale"), "{err}");
    }

    #[test]
    fn a_softmax_chain_is_refused_when_the_quantized_tensor_feeds_another_op() {
        let mut graph = chain(&["Softmax"], "s");
        graph.node.push(node("QLinearMatMul", &["q", "s"], "z"));
        let err = repair(&mut graph).unwrap_err();
        assert!(err.contains("QLinearMatMul"), "{err}");
    }

    #[test]
    fn a_softmax_that_is_not_between_quantizations_is_left_alone() {
        // The Softmax output is also read elsewhere: tract follows single successors only.
        let mut graph = chain(&["Softmax"], "s");
        graph.node.push(node("Relu", &["v1"], "side"));
        assert!(repair(&mut graph).unwrap().is_empty());
    }
}
