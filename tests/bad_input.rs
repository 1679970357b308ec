//! Bad input gets a clear error and changes nothing: a malformed manifest (line and field named),
//! an unreachable source, a cluster name enqueued twice.

mod common;

use common::Env;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn malformed_manifest_names_line_and_field_and_changes_nothing() {
    let env = Env::new("bad-manifest");
    let src = env.source("src");
    let manifest = format!(
        "[fleet]\nname = \"f\"\n\n[[cluster]]\nname = \"a\"\nsource = \"{}\"\nwave = \"first\"\n",
        src.dsn("postgres")
    );
    let out = env.enqueue("fleet.toml", &manifest);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("fleet.toml:7:") && err.contains("wave"), "{err}");

    let out = env.enqueue("fleet2.toml", &manifest.replace("wave = \"first\"", "wave = 0"));
    let err = stderr(&out);
    assert!(!out.status.success() && err.contains("fleet2.toml:7:") && err.contains("wave"), "{err}");

    let out = env.enqueue("fleet3.toml", &manifest.replace("wave = \"first\"", "wave = 1\nsoruce = \"x\""));
    let err = stderr(&out);
    assert!(!out.status.success() && err.contains("fleet3.toml:8:") && err.contains("soruce"), "{err}");

    assert!(env.clusters().is_empty(), "nothing may be enqueued");
    assert_eq!(env.cp_query("SELECT count(*) FROM dmf.fleets"), "0");
}

#[test]
fn unreachable_source_is_named_and_nothing_is_enqueued() {
    let env = Env::new("unreachable");
    let src = env.source("src");
    let dead_port = dmf_activities::providers::local::free_port().expect("port");
    let manifest = format!(
        "[fleet]\nname = \"f\"\n\n[[cluster]]\nname = \"good\"\nsource = \"{}\"\n\n[[cluster]]\nname = \"gone\"\nsource = \"postgres://postgres@127.0.0.1:{dead_port}/postgres\"\n",
        src.dsn("postgres")
    );
    let out = env.enqueue("fleet.toml", &manifest);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("\"gone\"") && err.contains("line 8") && err.contains("unreachable"), "{err}");
    assert!(env.clusters().is_empty(), "the reachable cluster must not be enqueued either");
}

#[test]
fn a_cluster_enqueued_twice_is_refused_by_name_and_changes_nothing() {
    let env = Env::new("twice");
    let src = env.source("src");
    let one = format!("[fleet]\nname = \"f\"\n\n[[cluster]]\nname = \"orders\"\nsource = \"{}\"\n", src.dsn("postgres"));
    let out = env.enqueue("one.toml", &one);
    assert!(out.status.success(), "{}", stderr(&out));
    let two = format!(
        "[fleet]\nname = \"g\"\n\n[[cluster]]\nname = \"ledger\"\nsource = \"{0}\"\n\n[[cluster]]\nname = \"orders\"\nsource = \"{0}\"\n",
        src.dsn("postgres")
    );
    let out = env.enqueue("two.toml", &two);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("already enqueued") && err.contains("\"orders\""), "{err}");
    let names: Vec<String> = env.clusters().iter().map(|c| c["cluster"].as_str().unwrap_or("").to_string()).collect();
    assert_eq!(names, vec!["orders"]);
    assert_eq!(env.cp_query("SELECT count(*) FROM dmf.fleets"), "1");

    // The same name twice inside one manifest is caught before anything runs.
    let dup = format!("{one}\n[[cluster]]\nname = \"orders\"\nsource = \"{}\"\n", src.dsn("postgres"));
    let out = env.enqueue("dup.toml", &dup);
    let err = stderr(&out);
    assert!(!out.status.success() && err.contains("appears twice"), "{err}");
}
