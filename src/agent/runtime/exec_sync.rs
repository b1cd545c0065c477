//! `exec_sync` for containerd (CRI `ExecSync` without CRI): runs one command in a running
//! container and collects its output, for exec probes and lifecycle hooks. Streaming exec
//! (`kubectl exec`) is a separate piece of work and does not use this.
//!
//! Mechanics (containerd 1.6 Tasks API, see the containerd guide §5): the process spec is the
//! container's own OCI `process` (env, user, cwd, capabilities) with `args` replaced and no
//! terminal, as the CRI plugin's `execInternal` does; Tasks.Exec with stdout/stderr both
//! `file://<run-dir>/exec/<id>.out` (the 1.6 shim merges them into that one file, so `stderr`
//! stays empty), Start, Wait with the timeout (then SIGKILL), DeleteProcess — which waits for
//! the shim's output copy — then read and remove the file.

use containerd_client::services::v1 as api;
use std::path::Path;
use std::time::Duration;

use super::client::{call, Client};
use super::{ExecOutput, Result, RuntimeError};

const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
/// Upstream caps probe output at 10 KiB (`maxProbeRespBodyLen` / exec probe limit).
const MAX_OUTPUT: usize = 10 * 1024;

fn err(e: super::client::ClientError) -> RuntimeError {
    RuntimeError::Containerd(e.to_string())
}

/// Runs `cmd` in container `id`; see the module header.
pub async fn exec_sync(c: &Client, run_dir: &Path, id: &str, cmd: &[String], timeout: Duration) -> Result<ExecOutput> {
    if cmd.is_empty() {
        return Err(RuntimeError::Other("exec: empty command".into()));
    }
    let record = c
        .containers()
        .get(c.req(api::GetContainerRequest { id: id.to_string() }))
        .await
        .map_err(|s| match s.code() {
            tonic::Code::NotFound => RuntimeError::NotFound(format!("container {id}")),
            _ => err(call("get container")(s)),
        })?
        .into_inner()
        .container
        .ok_or_else(|| RuntimeError::NotFound(format!("container {id}")))?;
    let spec: serde_json::Value = record
        .spec
        .as_ref()
        .and_then(|a| serde_json::from_slice(&a.value).ok())
        .ok_or_else(|| RuntimeError::Other(format!("container {id} has no readable OCI spec")))?;
    let mut process = spec.get("process").cloned().unwrap_or_else(|| serde_json::json!({}));
    process["args"] = serde_json::json!(cmd);
    process["terminal"] = serde_json::json!(false);
    let value = serde_json::to_vec(&process).map_err(|e| RuntimeError::Other(format!("exec spec: {e}")))?;

    let exec_id = format!("sync-{}", uuid::Uuid::new_v4().simple());
    let dir = run_dir.join("exec");
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| RuntimeError::Other(format!("creating {}: {e}", dir.display())))?;
    let out_path = dir.join(format!("{id}-{exec_id}.out"));
    let uri = format!("file://{}", out_path.display());
    let mut tasks = c.tasks();
    tasks
        .exec(c.req(api::ExecProcessRequest {
            container_id: id.to_string(),
            exec_id: exec_id.clone(),
            stdin: String::new(),
            stdout: uri.clone(),
            stderr: uri,
            terminal: false,
            spec: Some(prost_types::Any { type_url: PROCESS_TYPE_URL.into(), value }),
        }))
        .await
        .map_err(|s| err(call("exec")(s)))?;

    let result = run(c, id, &exec_id, timeout).await;
    // Always delete the exec process so the shim lets go of it (and finishes copying output).
    let _ = tasks
        .delete_process(c.req(api::DeleteProcessRequest { container_id: id.to_string(), exec_id: exec_id.clone() }))
        .await;
    let mut output = tokio::fs::read(&out_path).await.unwrap_or_default();
    let _ = tokio::fs::remove_file(&out_path).await;
    output.truncate(MAX_OUTPUT);
    let (exit_code, timed_out) = result?;
    Ok(ExecOutput { exit_code, stdout: output, stderr: Vec::new(), timed_out })
}

async fn run(c: &Client, id: &str, exec_id: &str, timeout: Duration) -> Result<(i32, bool)> {
    let mut tasks = c.tasks();
    tasks
        .start(c.req(api::StartRequest { container_id: id.to_string(), exec_id: exec_id.to_string() }))
        .await
        .map_err(|s| err(call("start exec")(s)))?;
    let wait = tasks.wait(c.req(api::WaitRequest { container_id: id.to_string(), exec_id: exec_id.to_string() }));
    match tokio::time::timeout(timeout, wait).await {
        Ok(Ok(r)) => Ok((i32::try_from(r.into_inner().exit_status).unwrap_or(i32::MAX), false)),
        Ok(Err(s)) => Err(err(call("wait exec")(s))),
        Err(_) => {
            let kill = api::KillRequest {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                signal: nix::sys::signal::Signal::SIGKILL as u32,
                all: false,
            };
            let mut t2 = c.tasks();
            let _ = t2.kill(c.req(kill)).await;
            let wait = t2.wait(c.req(api::WaitRequest { container_id: id.to_string(), exec_id: exec_id.to_string() }));
            let _ = tokio::time::timeout(Duration::from_secs(5), wait).await;
            Ok((137, true))
        }
    }
}
