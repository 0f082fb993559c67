//! Every shipped model against its onnxruntime reference, over the wire; the CLI round trip; a model
//! with two inputs of different dtypes and symbolic dimensions; listings and descriptions.

use std::path::{Path, PathBuf};
use std::process::Command;

use inferd::client::{BlockingClient, ClientOptions};
use inferd::model::manifest::Manifest;
use inferd::model::DimSpec;
use inferd::npy::file_stem;
use inferd::proto::DType;
use inferd::tensor::HostTensor;

use crate::harness::{digits_input, npy, repo_root, scratch, TestServer};

/// `models/<name>/1` for every shipped model.
fn shipped() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(repo_root().join("models"))
        .unwrap()
        .map(|e| e.unwrap().path().join("1"))
        .filter(|p| p.join("model.onnx").is_file())
        .collect();
    dirs.sort();
    dirs
}

fn sample_inputs(dir: &Path) -> Vec<HostTensor> {
    inferd::npy::read_folder(&dir.join("sample")).unwrap()
}

/// Asserts `got` matches the reference within `abs` (floats) or exactly (integers).
pub fn assert_close(got: &HostTensor, want: &HostTensor, abs: f64, what: &str) {
    assert_eq!(got.dtype, want.dtype, "{what}: dtype");
    assert_eq!(got.shape, want.shape, "{what}: shape");
    match got.dtype {
        DType::F32 => {
            let (g, w) = (got.as_f32().unwrap(), want.as_f32().unwrap());
            let worst = g
                .iter()
                .zip(&w)
                .map(|(a, b)| f64::from((a - b).abs()))
                .fold(0.0, f64::max);
            eprintln!(
                "{what}: max abs difference from the reference {worst:e} (tolerance {abs:e})"
            );
            assert!(
                worst <= abs,
                "{what}: max abs difference {worst:e} exceeds {abs:e}"
            );
        }
        _ => assert_eq!(
            got.data, want.data,
            "{what}: integer outputs must match exactly"
        ),
    }
}

#[test]
fn every_shipped_model_reproduces_its_reference() {
    let server = TestServer::start();
    check_every_shipped_model(server.addr);
}

/// Asks the server at `addr` to run every shipped model on its sample and compares each output with
/// onnxruntime's reference, within the manifest's tolerance. Also used against cross-built servers.
pub fn check_every_shipped_model(addr: std::net::SocketAddr) {
    let client = BlockingClient::connect(addr, ClientOptions::default()).unwrap();
    let dirs = shipped();
    assert!(
        dirs.len() >= 5,
        "expected the shipped models, found {dirs:?}"
    );
    for dir in dirs {
        let name = dir.parent().unwrap().file_name().unwrap().to_str().unwrap();
        let manifest = Manifest::load(&dir)
            .unwrap()
            .expect("shipped models have a manifest");
        let tolerance = manifest
            .tolerance
            .expect("shipped manifests state a tolerance");
        assert!(
            !tolerance.reason.is_empty(),
            "{name}: the tolerance needs a reason"
        );
        let out = client
            .infer(name, Some(1), &sample_inputs(&dir), None)
            .unwrap();
        assert_eq!((out.model.as_str(), out.version), (name, 1));
        for t in &out.outputs {
            let want = npy(
                dir.join("reference")
                    .join(format!("{}.npy", file_stem(&t.name))),
                &t.name,
            );
            assert_close(t, &want, tolerance.abs, &format!("{name}/{}", t.name));
        }
        let expected_outputs = std::fs::read_dir(dir.join("reference")).unwrap().count();
        assert_eq!(
            out.outputs.len(),
            expected_outputs,
            "{name}: every reference output is produced"
        );
    }
}

#[test]
fn cli_infer_on_each_sample_reproduces_the_reference() {
    let server = TestServer::start();
    for dir in shipped() {
        let name = dir
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        let tolerance = Manifest::load(&dir)
            .unwrap()
            .unwrap()
            .tolerance
            .unwrap()
            .abs;
        let out_dir = scratch(&format!("cli-{name}"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_inferd"));
        cmd.args([
            "infer",
            "--addr",
            &server.addr.to_string(),
            "--model",
            &name,
        ]);
        for input in sample_inputs(&dir) {
            cmd.arg("--input").arg(format!(
                "{}={}",
                input.name,
                dir.join(format!("sample/{}.npy", input.name)).display()
            ));
        }
        let output = cmd
            .arg("--output")
            .arg(out_dir.as_os_str())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        // Every reference output was written under its file name (for ppocr-cls,
        // "save_infer_model/scale_0.tmp_1" becomes save_infer_model_scale_0_tmp_1.npy).
        for reference in std::fs::read_dir(dir.join("reference")).unwrap() {
            let reference = reference.unwrap().path();
            let file = reference.file_name().unwrap();
            let got = npy(out_dir.join(file), "out");
            let want = npy(&reference, "out");
            assert_close(
                &got,
                &want,
                tolerance,
                &format!("{name} via the CLI, {}", file.to_string_lossy()),
            );
        }
    }
}

#[test]
fn two_inputs_of_different_dtypes_with_symbolic_dimensions() {
    let server = TestServer::start();
    let client = BlockingClient::connect(server.addr, ClientOptions::default()).unwrap();
    // batch = 2, seq = 3
    let ids = HostTensor::from_i64("ids", &[2, 3], &[1, 2, 3, 10, 20, 30]);
    let mask = HostTensor::from_f32("mask", &[2, 3], &[1.0, 0.0, 1.0, 0.0, 0.0, 1.0]);
    let out = client
        .infer("masked-sum", None, &[mask.clone(), ids], None)
        .unwrap();
    assert_eq!(
        out.output("masked_sum").unwrap().as_f32().unwrap(),
        vec![4.0, 30.0]
    );
    assert_eq!(out.output("kept").unwrap().as_i64().unwrap(), vec![2, 1]);
    // Other sizes for the same symbols, resolved per request: batch = 1, seq = 5.
    let ids = HostTensor::from_i64("ids", &[1, 5], &[5, 6, 7, 8, 9]);
    let mask = HostTensor::from_f32("mask", &[1, 5], &[1.0; 5]);
    let out = client
        .infer("masked-sum", None, &[ids, mask], None)
        .unwrap();
    assert_eq!(
        out.output("masked_sum").unwrap().as_f32().unwrap(),
        vec![35.0]
    );
    assert_eq!(out.output("kept").unwrap().as_i64().unwrap(), vec![5]);
}

#[test]
fn listing_and_descriptions() {
    let server = TestServer::start();
    let client = BlockingClient::connect(server.addr, ClientOptions::default()).unwrap();
    let listing = client.list_models().unwrap();
    let names: Vec<&str> = listing.models.iter().map(|(n, _)| n.as_str()).collect();
    for expected in [
        "digits-mlp",
        "digits-mlp-int8",
        "masked-sum",
        "ppocr-cls",
        "silero-vad",
        "silero-vad-int8",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    assert!(!listing.truncated);

    let digits = client.model_info("digits-mlp", None).unwrap();
    assert_eq!(digits.batch_axis, Some(0));
    assert_eq!(
        digits.inputs[0].shape,
        vec![DimSpec::Symbol("N".into()), DimSpec::Fixed(64)]
    );
    assert_eq!(
        digits.outputs.iter().map(|o| o.dtype).collect::<Vec<_>>(),
        vec![DType::I64, DType::F32]
    );

    // No manifest: the facts come from the ONNX file, symbols included.
    let bare = client.model_info("masked-sum", Some(1)).unwrap();
    assert_eq!(bare.inputs[0].dtype, DType::I64);
    assert_eq!(bare.inputs[1].dtype, DType::F32);
    assert_eq!(
        bare.inputs[0].shape,
        vec![
            DimSpec::Symbol("batch".into()),
            DimSpec::Symbol("seq".into())
        ]
    );
    assert_eq!(bare.description, "");
}

#[test]
fn the_profile_times_every_node_of_the_plan() {
    let vdir = repo_root().join("models/digits-mlp/1");
    let manifest = Manifest::load(&vdir).unwrap().unwrap();
    let runtime =
        inferd::model::Runtime::load(&vdir.join("model.onnx"), Some(&manifest.inputs)).unwrap();
    let nodes = runtime.profile(&[digits_input()], 3).unwrap();
    assert!(nodes.len() > 3, "{nodes:?}");
    assert!(nodes.iter().any(|n| n.op.contains("MatMul")), "{nodes:?}");
    assert!(nodes.iter().map(|n| n.total).sum::<std::time::Duration>() > std::time::Duration::ZERO);
    // Profiling runs the model like any run: its outputs are unchanged by it.
    let out = runtime.run(vec![digits_input()]).unwrap();
    let want = npy(vdir.join("reference/label.npy"), "label");
    assert_close(&out[0], &want, 0.0, "digits label after profiling");
}

#[test]
fn a_run_with_pause_points_calls_them_once_per_operator_and_answers_the_same() {
    let vdir = repo_root().join("models/ppocr-cls/1");
    let manifest = Manifest::load(&vdir).unwrap().unwrap();
    let runtime =
        inferd::model::Runtime::load(&vdir.join("model.onnx"), Some(&manifest.inputs)).unwrap();
    let inputs = inferd::npy::read_folder(&vdir.join("sample")).unwrap();
    let operators = runtime.profile(&inputs, 1).unwrap().len();
    let mut points = 0;
    let paused = runtime
        .run_pausing(inputs.clone(), Some(&mut || points += 1))
        .unwrap();
    // One point before each operator of the plan: where the worker may yield the CPU.
    assert_eq!(points, operators);
    assert!(points > 10, "{points}");
    assert_eq!(paused, runtime.run(inputs).unwrap());
}

/// A copy of shipped model `from` as `<root>/<name>/1`, with `line` put first in its manifest.
fn variant(root: &Path, from: &str, name: &str, line: &str) {
    let dir = root.join(name).join("1");
    crate::harness::copy_dir(&repo_root().join("models").join(from).join("1"), &dir);
    let manifest = std::fs::read_to_string(dir.join("model.toml")).unwrap();
    std::fs::write(dir.join("model.toml"), format!("{line}\n{manifest}")).unwrap();
}

#[test]
fn single_rows_of_a_batching_model_may_run_a_plan_of_their_own() {
    let dir = scratch("single-row-plan");
    variant(&dir, "silero-vad", "own", "single_row_plan = true");
    variant(&dir, "silero-vad", "one", "single_row_plan = false");
    // batch_axis on a dimension the manifest fixes: served, but not batching.
    variant(&dir, "digits-mlp", "fixed", "");
    let fixed = dir.join("fixed/1/model.toml");
    let text = std::fs::read_to_string(&fixed).unwrap();
    std::fs::write(
        &fixed,
        text.replace("shape = [\"N\", 64]", "shape = [1, 64]"),
    )
    .unwrap();

    let repo = std::sync::Arc::new(
        inferd::model::Repository::open(&dir, inferd::model::repository::Settings::default())
            .unwrap(),
    );
    let models = repo.snapshot();
    let (own, one) = (
        models.get("own", None).unwrap(),
        models.get("one", None).unwrap(),
    );
    assert!(own.runtime.has_single_row_plan());
    assert!(!one.runtime.has_single_row_plan());
    // The second plan holds its own copy of the weights, and the memory budget counts it.
    assert_eq!(own.runtime.weight_bytes(), 2 * one.runtime.weight_bytes());
    assert!(models.get("fixed", None).unwrap().batch.is_none());

    let input = npy("models/silero-vad/1/sample/input.npy", "input");
    let state = npy("models/silero-vad/1/sample/state.npy", "state");
    let single = vec![input.clone(), state.clone()];
    let three = inferd::scheduler::batch::stack(&[&single[..], &single[..], &single[..]], &[0, 1]);
    // One row: each model's own plan, the same answer up to the last bits.
    let (a, b) = (
        own.runtime.run(single.clone()).unwrap(),
        one.runtime.run(single).unwrap(),
    );
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.shape, y.shape);
        for (p, q) in x.as_f32().unwrap().iter().zip(y.as_f32().unwrap()) {
            assert!((p - q).abs() <= 1e-5, "{} {p} vs {q}", x.name);
        }
    }
    // Three rows: both run the symbolic plan, so the same bits.
    let (a, b) = (
        own.runtime.run(three.clone()).unwrap(),
        one.runtime.run(three).unwrap(),
    );
    assert_eq!(a[1].shape, vec![2, 3, 128]);
    assert_eq!(a, b);

    // Clients learn the batch axis only of a model that batches.
    let server = TestServer::serving(repo, |_| {});
    let client = BlockingClient::connect(server.addr, ClientOptions::default()).unwrap();
    let vad = client.model_info("own", None).unwrap();
    assert_eq!(vad.batch_axis, Some(0));
    assert_eq!(
        vad.inputs[1].shape,
        vec![
            DimSpec::Fixed(2),
            DimSpec::Symbol("N".into()),
            DimSpec::Fixed(128)
        ]
    );
    assert_eq!(client.model_info("fixed", None).unwrap().batch_axis, None);
}
