//! deploy/k8s/: every manifest checked offline against the pinned part of the Kubernetes
//! schema (deploy/k8s/schema.yaml: closed objects, types, required fields, enums); the
//! kustomization's files exist and the Job mounts the ConfigMap it generates; the TOML config
//! is one `run` accepts; and the entrypoint maps JOB_COMPLETION_INDEX to disjoint, contiguous
//! device ranges (run with a stand-in for the binary that prints its arguments).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml::Value;

fn k8s() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/k8s")
}

fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{path:?}: {e}")))
        .collect()
}

/// Checks `v` against schema node `node`; pushes one line per problem, naming the path.
fn check(schema: &Value, node: &Value, v: &Value, at: &str, errs: &mut Vec<String>) {
    if let Some(name) = node.get("ref").and_then(Value::as_str) {
        let def = &schema["definitions"][name];
        assert!(!def.is_null(), "schema: no definition {name}");
        return check_object(schema, def, v, at, errs);
    }
    let ty = node.get("type").and_then(Value::as_str).unwrap_or("object");
    let ok = match ty {
        "string" => v.is_string(),
        "integer" => v.as_i64().is_some(),
        "boolean" => v.is_bool(),
        "quantity" => v.is_string() || v.is_number(),
        "array" => v.is_sequence(),
        "object" => v.is_mapping(),
        other => panic!("schema: unknown type {other}"),
    };
    if !ok {
        errs.push(format!("{at}: not a {ty}: {v:?}"));
        return;
    }
    if let Some(allowed) = node.get("enum").and_then(Value::as_sequence) {
        if !allowed.contains(v) {
            errs.push(format!("{at}: {v:?} is none of {allowed:?}"));
        }
    }
    match ty {
        "array" => {
            for (i, item) in v.as_sequence().into_iter().flatten().enumerate() {
                check(schema, &node["items"], item, &format!("{at}[{i}]"), errs);
            }
        }
        "object" => check_object(schema, node, v, at, errs),
        _ => {}
    }
}

fn check_object(schema: &Value, def: &Value, v: &Value, at: &str, errs: &mut Vec<String>) {
    let Some(map) = v.as_mapping() else {
        return errs.push(format!("{at}: not an object"));
    };
    for req in def
        .get("required")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
    {
        if !map.contains_key(req) {
            errs.push(format!("{at}: required field {req:?} missing"));
        }
    }
    for (k, item) in map {
        let key = k.as_str().unwrap_or("?");
        let path = format!("{at}.{key}");
        if let Some(values) = def.get("values") {
            check(schema, values, item, &path, errs);
        } else if let Some(field) = def.get("properties").and_then(|p| p.get(key)) {
            check(schema, field, item, &path, errs);
        } else {
            errs.push(format!("{path}: no such field"));
        }
    }
}

fn schema() -> Value {
    yaml_docs(&k8s().join("schema.yaml")).remove(0)
}

/// Problems of one manifest document.
fn problems(doc: &Value) -> Vec<String> {
    let schema = schema();
    let key = format!(
        "{}/{}",
        doc["apiVersion"].as_str().unwrap_or("?"),
        doc["kind"].as_str().unwrap_or("?")
    );
    let Some(def) = schema["kinds"][key.as_str()].as_str() else {
        return vec![format!("{key}: not a kind the pinned schema has")];
    };
    let mut errs = Vec::new();
    let node = Value::Mapping([("ref".into(), def.into())].into_iter().collect());
    check(&schema, &node, doc, &key, &mut errs);
    errs
}

#[test]
fn the_manifests_match_the_kubernetes_schema() {
    let kustomization = yaml_docs(&k8s().join("kustomization.yaml")).remove(0);
    assert_eq!(problems(&kustomization), Vec::<String>::new());
    let mut kinds = Vec::new();
    for r in kustomization["resources"].as_sequence().unwrap() {
        for doc in yaml_docs(&k8s().join(r.as_str().unwrap())) {
            assert_eq!(problems(&doc), Vec::<String>::new(), "{r:?}");
            kinds.push(doc["kind"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(kinds, ["Deployment", "Service", "Job"]);
    // The generated ConfigMap's files exist, and the Job mounts it and runs its entrypoint.
    let gen = &kustomization["configMapGenerator"][0];
    for f in gen["files"].as_sequence().unwrap() {
        assert!(k8s().join(f.as_str().unwrap()).is_file(), "{f:?}");
    }
    let job = yaml_docs(&k8s().join("job.yaml")).remove(0);
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["volumes"][0]["configMap"]["name"], gen["name"]);
    assert_eq!(job["spec"]["completionMode"], "Indexed");
    assert_eq!(job["spec"]["completions"], job["spec"]["parallelism"]);
    let notes = &job["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(notes["prometheus.io/scrape"], "true");
    assert_eq!(pod["containers"][0]["ports"][0]["containerPort"], 9100);
    assert_eq!(notes["prometheus.io/port"], "9100");
}

#[test]
fn the_check_finds_what_is_wrong() {
    let mut job = yaml_docs(&k8s().join("job.yaml")).remove(0);
    job["spec"]["completionsMode"] = "Indexed".into();
    job["spec"]["completions"] = "ten".into();
    job["spec"]["template"]["spec"]["restartPolicy"] = "Sometimes".into();
    let containers = &mut job["spec"]["template"]["spec"]["containers"][0];
    containers.as_mapping_mut().unwrap().remove("name");
    let errs = problems(&job).join("\n");
    for want in [
        "spec.completionsMode: no such field",
        "spec.completions: not a integer",
        "restartPolicy: String(\"Sometimes\") is none of",
        "containers[0]: required field String(\"name\") missing",
    ] {
        assert!(errs.contains(want), "{want:?} not in:\n{errs}");
    }
    let other = serde_yaml::from_str::<Value>("apiVersion: v9\nkind: Nope\n").unwrap();
    assert!(!problems(&other).is_empty());
}

#[test]
fn the_fleet_config_is_one_run_accepts() {
    use clap::Parser;
    use mpush_fleet::control::cli::{merge_config, RunArgs};
    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Sub,
    }
    #[derive(clap::Subcommand)]
    enum Sub {
        Run(RunArgs),
    }
    let config = k8s().join("fleet.toml");
    let argv: Vec<String> = ["mpush-fleet", "run", "--config", config.to_str().unwrap()]
        .iter()
        .map(ToString::to_string)
        .collect();
    let Cli {
        cmd: Sub::Run(args),
    } = Cli::try_parse_from(&argv).unwrap();
    let args = merge_config(args, &argv).expect("deploy/k8s/fleet.toml is a valid config");
    assert_eq!(args.servers.len(), 2);
    assert!(args.redis.is_some());
}

/// Runs the entrypoint with `env`, a stand-in binary that prints its arguments and writes a
/// two-line report; returns (exit code, stdout, stderr).
fn entrypoint(env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let dir = std::env::temp_dir().join(format!("mpush-fleet-k8s-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fake = dir.join("fake-fleet");
    let script = "#!/bin/sh\necho \"args: $*\"\nwhile [ $# -gt 0 ]; do \
                  [ \"$1\" = --report ] && printf '{\"devices\":\\n 7}\\n' > \"$2\"; shift; done\n";
    std::fs::write(&fake, script).unwrap();
    let mode = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(&fake, mode).unwrap();
    let out = Command::new("sh")
        .arg(k8s().join("entrypoint.sh"))
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("MPUSH_FLEET", &fake)
        .env("REPORT", dir.join("report.json"))
        .envs(env.iter().copied())
        .env("CONFIG", "/etc/fleet.toml")
        .output()
        .unwrap();
    let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), s(&out.stdout), s(&out.stderr))
}

#[test]
fn the_entrypoint_maps_the_index_to_a_device_range() {
    let mut ranges = Vec::new();
    for i in 0..10 {
        let idx = i.to_string();
        let env = [
            ("JOB_COMPLETION_INDEX", idx.as_str()),
            ("DEVICES_PER_POD", "100000"),
            ("FIRST_DEVICE", "5"),
        ];
        let (code, out, err) = entrypoint(&env);
        assert_eq!(code, Some(0), "{out}{err}");
        let args: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
        let flag = |f: &str| -> u64 {
            let at = args
                .iter()
                .position(|a| *a == f)
                .unwrap_or_else(|| panic!("{f}: {out}"));
            args[at + 1].parse().unwrap()
        };
        ranges.push((flag("--first-device"), flag("--devices")));
        assert!(
            args.windows(2).any(|w| w == ["--processes", "auto"]),
            "{out}"
        );
        assert!(
            out.contains("\nreport: {\"devices\": 7}\n"),
            "one line: {out}"
        );
    }
    assert_eq!(ranges[0], (5, 100_000));
    for w in ranges.windows(2) {
        assert_eq!(w[0].0 + w[0].1, w[1].0, "contiguous, disjoint: {ranges:?}");
    }
    for bad in [
        vec![("DEVICES_PER_POD", "10")],
        vec![("JOB_COMPLETION_INDEX", "x"), ("DEVICES_PER_POD", "10")],
        vec![
            ("JOB_COMPLETION_INDEX", "9"),
            ("DEVICES_PER_POD", "1000000000"),
        ],
    ] {
        let (code, out, err) = entrypoint(&bad);
        assert_ne!(code, Some(0), "{bad:?}: {out}{err}");
        assert!(!out.contains("args:"), "the fleet must not start: {bad:?}");
    }
}
