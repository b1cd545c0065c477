//! The k3s-style config file through the real `skiff` binary: `skiff snapshot ls` taking its
//! data dir from the file (over `SKIFF_DATA_DIR`, under `--data-dir`, replaced by a drop-in),
//! the errors a bad file gives before anything starts, and a `skiff server` configured only by
//! `--config FILE` serving on the file's port and writing the kubeconfig where the file says.

mod procs;

use procs::*;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// `skiff <args>` with the given environment and none of the caller's SKIFF_ variables.
fn skiff(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_skiff"));
    c.args(args).stdin(Stdio::null());
    for (k, _) in std::env::vars_os().filter(|(k, _)| k.to_string_lossy().starts_with("SKIFF_")) {
        c.env_remove(k);
    }
    // A user's error has no Rust backtrace; keep the message what they would see.
    c.env_remove("RUST_BACKTRACE").env_remove("RUST_LIB_BACKTRACE");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run skiff")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A data dir holding one (empty) snapshot file called `name`, so `snapshot ls` shows which
/// data dir it read.
fn data_dir_with_snapshot(root: &Path, dir: &str, name: &str) -> std::path::PathBuf {
    let d = root.join(dir);
    std::fs::create_dir_all(d.join("server/snapshots")).expect("mkdir");
    std::fs::write(d.join("server/snapshots").join(name), b"").expect("snapshot file");
    d
}

#[test]
fn snapshot_ls_takes_its_data_dir_from_the_file_between_the_command_line_and_the_environment() {
    let root = TestDir::new();
    let r = root.path();
    let from_file = data_dir_with_snapshot(r, "file", "from-file-1-1");
    let from_env = data_dir_with_snapshot(r, "env", "from-env-1-1");
    let from_cli = data_dir_with_snapshot(r, "cli", "from-cli-1-1");
    let from_dropin = data_dir_with_snapshot(r, "dropin", "from-dropin-1-1");
    let cfg = r.join("config.yaml");
    // A server's file: the keys `snapshot ls` has no flag for are skipped, not errors.
    std::fs::write(
        &cfg,
        format!("data-dir: {}\nnode-ip: 10.0.0.5\ntls-san: [a.example]\ndisable-agent: true\n", from_file.display()),
    )
    .expect("write config");
    let env: [(&str, &Path); 2] = [("SKIFF_CONFIG_FILE", &cfg), ("SKIFF_DATA_DIR", &from_env)];

    let o = skiff(&["snapshot", "ls"], &env);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("from-file-1-1") && !stdout(&o).contains("from-env"), "file over env:\n{}", stdout(&o));
    assert!(stderr(&o).contains("read config file"), "the file read is logged:\n{}", stderr(&o));

    let cli = from_cli.display().to_string();
    let o = skiff(&["snapshot", "ls", "--data-dir", &cli], &env);
    assert!(stdout(&o).contains("from-cli-1-1"), "command line over file:\n{}{}", stdout(&o), stderr(&o));

    std::fs::create_dir_all(r.join("config.yaml.d")).expect("mkdir drop-ins");
    std::fs::write(r.join("config.yaml.d/50-data.yaml"), format!("data-dir: {}\n", from_dropin.display()))
        .expect("write drop-in");
    let o = skiff(&["snapshot", "ls"], &env);
    assert!(stdout(&o).contains("from-dropin-1-1"), "a drop-in over the file:\n{}{}", stdout(&o), stderr(&o));

    // --config names the file too, and wins over SKIFF_CONFIG_FILE.
    let other = r.join("other.yaml");
    std::fs::write(&other, format!("data-dir: {}\n", from_cli.display())).expect("write other config");
    let o = skiff(&["snapshot", "ls", "--config", &other.display().to_string()], &env);
    assert!(stdout(&o).contains("from-cli-1-1"), "--config over SKIFF_CONFIG_FILE:\n{}{}", stdout(&o), stderr(&o));
}

#[test]
fn a_bad_config_file_stops_skiff_with_a_message_naming_key_and_file() {
    let root = TestDir::new();
    let r = root.path();
    let cfg = r.join("config.yaml");
    let cfg_s = cfg.display().to_string();
    let dropin = r.join("config.yaml.d/10-typo.yaml");
    std::fs::create_dir_all(r.join("config.yaml.d")).expect("mkdir");
    std::fs::write(&cfg, "node-ip: 10.0.0.5\n").expect("write config");
    std::fs::write(&dropin, "nod-ip: 10.0.0.6\n").expect("write drop-in");

    let fails = |args: &[&str]| {
        let o = skiff(args, &[]);
        assert!(!o.status.success(), "{args:?} succeeded: {}", stdout(&o));
        stderr(&o)
    };
    let e = fails(&["server", "--config", &cfg_s, "--data-dir", &r.join("data").display().to_string()]);
    assert!(e.contains(&format!("{}: unknown key \"nod-ip\" (did you mean \"node-ip\"?)", dropin.display())), "{e}");
    assert!(!e.contains("backtrace") && !r.join("data").exists(), "nothing started:\n{e}");

    std::fs::remove_file(&dropin).expect("rm drop-in");
    std::fs::write(&cfg, "node-ip: [10.0.0.5]\n").expect("write config");
    let e = fails(&["agent", "-c", &cfg_s, "--server", "https://127.0.0.1:1", "--token", "t"]);
    assert!(e.contains(&format!("{cfg_s}: node-ip: expected an IP address, found a list")), "{e}");

    let missing = r.join("missing.yaml").display().to_string();
    let e = fails(&["snapshot", "ls", "--config", &missing]);
    assert!(e.contains(&format!("{missing}: no such config file")), "{e}");

    // Help still works with a broken file.
    let o = skiff(&["server", "--config", &cfg_s, "--help"], &[]);
    assert!(o.status.success() && stdout(&o).contains("--config <FILE>"), "{}", stderr(&o));
}

#[test]
fn a_server_configured_only_by_its_file_listens_and_writes_its_kubeconfig_where_the_file_says() {
    let root = TestDir::new();
    let r = root.path();
    let data = r.join("s1");
    let kubeconfig = r.join("out/admin.yaml");
    let port = free_port();
    let cfg = r.join("config.yaml");
    std::fs::write(
        &cfg,
        format!(
            "data-dir: {data}\nhttps-listen-port: {port}\nbind-address: 127.0.0.1\nnode-ip: 127.0.0.1\n\
             advertise-address: 127.0.0.1\nnode-name: from-config\ndisable-agent: true\n\
             write-kubeconfig: {kc}\nwrite-kubeconfig-mode: \"0640\"\ntls-san: [config-file.example]\n",
            data = data.display(),
            kc = kubeconfig.display(),
        ),
    )
    .expect("write config");
    std::fs::create_dir_all(kubeconfig.parent().expect("parent")).expect("mkdir");
    let log = std::fs::File::create(r.join("s1.log")).expect("log");
    // SKIFF_HTTPS_LISTEN_PORT names a port nothing listens on: the file's value must win.
    let wrong_port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["server", "--config", &cfg.display().to_string()])
        .env("SKIFF_LOG", "info,openraft=warn")
        .env("SKIFF_HTTPS_LISTEN_PORT", wrong_port.to_string())
        .env_remove("SKIFF_CONFIG_FILE")
        .env_remove("SKIFF_DATA_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn skiff");
    // Killed by its PID when dropped, pass or fail.
    let server = Proc { child, data: data.clone(), port };
    rt().block_on(wait_ready(&server, r, "s1"));

    let text = std::fs::read_to_string(&kubeconfig).expect("kubeconfig written where the file says");
    assert!(text.contains(&format!("https://127.0.0.1:{port}")), "{text}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&kubeconfig).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "write-kubeconfig-mode from the file");
    assert!(log_of(r, "s1").contains("read config file"), "{}", log_of(r, "s1"));
    drop(server);
}
