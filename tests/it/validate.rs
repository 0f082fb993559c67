//! `inferd validate`: two variants of a shipped model over the committed data sets
//! (`tests/fixtures/validation/`), as an operator deciding between fp32 and int8 would run it.

use std::process::{Command, Output};

use crate::harness::repo_root;

fn validate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_inferd"))
        .current_dir(repo_root())
        .arg("validate")
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn report(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn output<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == name)
        .unwrap_or_else(|| panic!("no output {name} in {report}"))
}

#[test]
fn a_variant_against_itself_is_identical() {
    let out = validate(&[
        "--reference=models/digits-mlp/1",
        "--candidate=models/digits-mlp/1",
        "--data=tests/fixtures/validation/digits-mlp",
        "--classes=probabilities",
        "--limit=50",
        "--passes=1",
        "--max-abs=0",
        "--json",
    ]);
    assert!(out.status.success(), "{out:?}");
    let r = report(&out);
    assert_eq!(r["samples"], 50);
    assert_eq!(r["pass"], true);
    let probs = output(&r, "probabilities");
    assert_eq!(probs["max_abs"], 0.0);
    assert_eq!(probs["agreement"], 1.0);
    assert_eq!(probs["agreement_kind"], "argmax");
    assert!((probs["cosine_mean"].as_f64().unwrap() - 1.0).abs() < 1e-9);
    let label = output(&r, "label");
    assert_eq!(
        (&label["agreement"], &label["agreement_kind"]),
        (&1.0.into(), &"exact".into())
    );
}

#[test]
fn int8_digits_agree_with_fp32_and_the_report_says_by_how_much() {
    let out = validate(&[
        "--reference=models/digits-mlp/1",
        "--candidate=models/digits-mlp-int8/1",
        "--data=tests/fixtures/validation/digits-mlp",
        "--classes=probabilities",
        "--passes=1",
        "--json",
    ]);
    let r = report(&out);
    assert_eq!(r["samples"], 500);
    let probs = output(&r, "probabilities");
    // Quantization changes the numbers (so a candidate that ignored its own weights would show)…
    assert!(probs["max_abs"].as_f64().unwrap() > 0.0, "{probs}");
    // …but not the decisions: the thresholds hold and the exit status says so.
    assert!(probs["agreement"].as_f64().unwrap() >= 0.99, "{probs}");
    assert!(probs["cosine_mean"].as_f64().unwrap() >= 0.99, "{probs}");
    assert_eq!(r["pass"], true, "{r}");
    assert!(out.status.success());
    assert!(r["reference"]["p50_us"].as_f64().unwrap() > 0.0);
}

#[test]
fn a_recurrent_model_carries_its_state_and_failures_set_the_exit_status() {
    let out = validate(&[
        "--reference=models/silero-vad/1",
        "--candidate=models/silero-vad-int8/1",
        "--data=tests/fixtures/validation/silero-vad",
        "--classes=output",
        "--carry=stateN=state",
        "--limit=40",
        "--passes=1",
        "--max-abs=1e-9",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let r = report(&out);
    assert_eq!(r["pass"], false);
    let failures: Vec<&str> = r["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(
        failures.iter().any(|f| f.starts_with("output: max abs")),
        "{failures:?}"
    );
    // The state is reported but not judged: only what it leads to is.
    assert!(
        !failures.iter().any(|f| f.starts_with("stateN")),
        "{failures:?}"
    );
    assert_eq!(output(&r, "stateN")["gated"], false);
    assert_eq!(output(&r, "output")["agreement_kind"], "p>0.5");
}

#[test]
fn bad_arguments_are_named() {
    let out = validate(&[
        "--reference=models/silero-vad/1",
        "--candidate=models/silero-vad-int8/1",
        "--data=tests/fixtures/validation/silero-vad",
        "--carry=nope=state",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--carry nope=state"), "{err}");
    let out = validate(&[
        "--reference=models/digits-mlp/1",
        "--candidate=models/silero-vad/1",
        "--data=tests/fixtures/validation/digits-mlp",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("different inputs"));
}
