//! Resource usage of the node, its pods and their containers, served at `/stats/summary` in the
//! kubelet Summary API shape (`stats/v1alpha1`), which the API server's metrics.k8s.io reads.
//!
//! Where the numbers come from:
//! - containers: the runtime puts each container in cgroup `/<cgroup_root>/pod<uid>/<id>`
//!   (`runtime::containerd`, `cgroupsPath` of the OCI spec), and runc creates the parent
//!   `/<cgroup_root>/pod<uid>`, which therefore sums the pod's containers. With cgroup v2 these
//!   live under `/sys/fs/cgroup`; with cgroup v1 under each controller's hierarchy
//!   (`/sys/fs/cgroup/cpuacct/...`, `/sys/fs/cgroup/memory/...`).
//! - CPU: cumulative usage (v2 `cpu.stat` `usage_usec`, v1 `cpuacct.usage` in ns) turned into a
//!   rate in nanocores between two samples at least a second apart (cAdvisor does the same
//!   between housekeeping passes). A background pass every [`SAMPLE_PERIOD`] keeps a baseline.
//! - memory working set: usage minus inactive file pages (v2 `memory.current` − `inactive_file`,
//!   v1 `memory.usage_in_bytes` − `total_inactive_file`), cAdvisor's definition.
//! - node: `/proc/stat` (busy = all − idle − iowait) and `/proc/meminfo`
//!   (working set = MemTotal − MemAvailable).

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio_util::sync::CancellationToken;

use crate::agent::runtime::{ContainerState, Runtime};

/// How often the background pass samples every cgroup (cAdvisor's housekeeping is ~10 s).
pub const SAMPLE_PERIOD: Duration = Duration::from_secs(10);
/// Two samples closer than this give no rate (too noisy).
const MIN_WINDOW: Duration = Duration::from_secs(1);
/// Kernel clock ticks per second for `/proc/stat` (USER_HZ is 100 on every Linux ABI).
const USER_HZ: u64 = 100;

// ---------------------------------------------------------------------------------------------
// Pure parsing

/// `usage_usec` from a cgroup v2 `cpu.stat`, in nanoseconds.
pub fn parse_cpu_stat_usage_ns(text: &str) -> Option<u64> {
    stat_value(text, "usage_usec").map(|us| us.saturating_mul(1000))
}

/// The value of `key` in a flat-keyed file (`memory.stat`, `cpu.stat`: `key value` lines).
pub fn stat_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next()? == key).then(|| it.next()?.parse().ok())?
    })
}

/// A single number file (`cpuacct.usage`, `memory.current`); `max` and garbage are None.
pub fn parse_single(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// Working set: usage less inactive file pages, never below zero.
pub fn working_set(usage: u64, inactive_file: u64) -> u64 {
    usage.saturating_sub(inactive_file)
}

/// Busy CPU time of the whole machine in nanoseconds from `/proc/stat`'s `cpu` line:
/// user + nice + system + irq + softirq + steal (idle and iowait left out).
pub fn parse_proc_stat_busy_ns(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.split_whitespace().next() == Some("cpu"))?;
    let f: Vec<u64> = line.split_whitespace().skip(1).map(|x| x.parse().ok()).collect::<Option<_>>()?;
    if f.len() < 4 {
        return None;
    }
    let at = |i: usize| f.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal (guest time is already inside user).
    let busy = at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
    Some(busy.saturating_mul(1_000_000_000 / USER_HZ))
}

/// (MemTotal, MemAvailable, MemFree) in bytes from `/proc/meminfo`.
pub fn parse_meminfo(text: &str) -> Option<(u64, u64, u64)> {
    let kb = |key: &str| {
        text.lines().find_map(|l| {
            let rest = l.strip_prefix(key)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse::<u64>().ok().map(|v| v * 1024)
        })
    };
    let total = kb("MemTotal")?;
    let free = kb("MemFree").unwrap_or(0);
    Some((total, kb("MemAvailable").unwrap_or(free), free))
}

/// CPU rate in nanocores between two cumulative readings (ns of CPU time over wall time).
pub fn nanocores(prev_ns: u64, prev_at: Instant, cur_ns: u64, cur_at: Instant) -> Option<u64> {
    let dt = cur_at.checked_duration_since(prev_at)?.as_nanos();
    if dt == 0 || cur_ns < prev_ns {
        return None;
    }
    Some(((cur_ns - prev_ns) as u128 * 1_000_000_000 / dt) as u64)
}

/// Keeps the last cumulative reading of each cgroup and the rate measured up to it.
#[derive(Debug, Default)]
pub struct RateTracker {
    samples: HashMap<String, Sample>,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    usage_ns: u64,
    rate: Option<u64>,
}

impl RateTracker {
    /// Records a reading and returns the current rate: measured against the previous reading
    /// when that is at least [`MIN_WINDOW`] old (the reading then becomes the new baseline),
    /// else the last rate measured (a reading too close to the baseline is not kept). None
    /// until two readings far enough apart exist, or after the counter went backwards (a
    /// re-created cgroup).
    pub fn observe(&mut self, key: &str, usage_ns: u64, at: Instant) -> Option<u64> {
        match self.samples.get_mut(key) {
            None => {
                self.samples.insert(key.to_string(), Sample { at, usage_ns, rate: None });
                None
            }
            Some(s) if usage_ns < s.usage_ns => {
                *s = Sample { at, usage_ns, rate: None };
                None
            }
            Some(s) if at.checked_duration_since(s.at).is_some_and(|d| d >= MIN_WINDOW) => {
                let rate = nanocores(s.usage_ns, s.at, usage_ns, at);
                *s = Sample { at, usage_ns, rate };
                rate
            }
            Some(s) => s.rate,
        }
    }

    /// Forgets cgroups not in `live` (containers and pods that are gone).
    pub fn retain(&mut self, live: &std::collections::HashSet<String>) {
        self.samples.retain(|k, _| live.contains(k));
    }
}

// ---------------------------------------------------------------------------------------------
// cgroup files

/// Where the cgroup controllers are mounted.
#[derive(Debug, Clone, PartialEq)]
pub enum CgroupLayout {
    /// Unified hierarchy at this path.
    V2(PathBuf),
    /// Legacy hierarchies: the cpuacct one and the memory one.
    V1 { cpuacct: PathBuf, memory: PathBuf },
}

impl CgroupLayout {
    /// Looks at `/sys/fs/cgroup` as runc does: cgroup v2 when it is the unified hierarchy
    /// (it has `cgroup.controllers`), else the v1 controller hierarchies.
    pub fn detect() -> CgroupLayout {
        Self::detect_at(Path::new("/sys/fs/cgroup"))
    }

    pub fn detect_at(base: &Path) -> CgroupLayout {
        if base.join("cgroup.controllers").exists() {
            return CgroupLayout::V2(base.to_path_buf());
        }
        let pick = |names: &[&str], file: &str| {
            names.iter().map(|n| base.join(n)).find(|p| p.join(file).exists()).unwrap_or_else(|| base.join(names[0]))
        };
        CgroupLayout::V1 {
            cpuacct: pick(&["cpuacct", "cpu,cpuacct", "cpuacct,cpu"], "cpuacct.usage"),
            memory: pick(&["memory"], "memory.usage_in_bytes"),
        }
    }

    /// Cumulative CPU time of cgroup `rel` (e.g. `skiff/pod<uid>/<id>`) in nanoseconds.
    pub fn cpu_usage_ns(&self, rel: &str) -> Option<u64> {
        match self {
            CgroupLayout::V2(b) => parse_cpu_stat_usage_ns(&read(&b.join(rel).join("cpu.stat"))?),
            CgroupLayout::V1 { cpuacct, .. } => parse_single(&read(&cpuacct.join(rel).join("cpuacct.usage"))?),
        }
    }

    /// (usage, working set) of cgroup `rel` in bytes.
    pub fn memory(&self, rel: &str) -> Option<(u64, u64)> {
        let (usage, stat, inactive_key) = match self {
            CgroupLayout::V2(b) => {
                let d = b.join(rel);
                (read(&d.join("memory.current"))?, read(&d.join("memory.stat")), "inactive_file")
            }
            CgroupLayout::V1 { memory, .. } => {
                let d = memory.join(rel);
                (read(&d.join("memory.usage_in_bytes"))?, read(&d.join("memory.stat")), "total_inactive_file")
            }
        };
        let usage = parse_single(&usage)?;
        let inactive = stat.and_then(|s| stat_value(&s, inactive_key)).unwrap_or(0);
        Some((usage, working_set(usage, inactive)))
    }
}

fn read(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok()
}

// ---------------------------------------------------------------------------------------------
// The provider

/// Samples the node, pod and container cgroups and renders the Summary.
pub struct StatsProvider {
    node_name: String,
    cgroup_root: String,
    runtime: Arc<dyn Runtime>,
    layout: CgroupLayout,
    rates: Mutex<RateTracker>,
    started: SystemTime,
}

/// One container or pod reading.
#[derive(Debug, Clone, Default, PartialEq)]
struct Usage {
    cpu_total_ns: Option<u64>,
    nanocores: Option<u64>,
    memory: Option<(u64, u64)>,
}

fn rfc3339(t: SystemTime) -> String {
    DateTime::<Utc>::from(t).to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn cpu_json(u: &Usage, time: &str) -> Value {
    let mut v = json!({ "time": time });
    if let Some(n) = u.nanocores {
        v["usageNanoCores"] = json!(n);
    }
    if let Some(t) = u.cpu_total_ns {
        v["usageCoreNanoSeconds"] = json!(t);
    }
    v
}

fn memory_json(u: &Usage, time: &str) -> Value {
    let mut v = json!({ "time": time });
    if let Some((usage, ws)) = u.memory {
        v["usageBytes"] = json!(usage);
        v["workingSetBytes"] = json!(ws);
    }
    v
}

impl StatsProvider {
    pub fn new(node_name: &str, cgroup_root: &str, runtime: Arc<dyn Runtime>) -> StatsProvider {
        Self::with_layout(node_name, cgroup_root, runtime, CgroupLayout::detect())
    }

    pub fn with_layout(
        node_name: &str,
        cgroup_root: &str,
        runtime: Arc<dyn Runtime>,
        layout: CgroupLayout,
    ) -> StatsProvider {
        StatsProvider {
            node_name: node_name.to_string(),
            cgroup_root: cgroup_root.trim_matches('/').to_string(),
            runtime,
            layout,
            rates: Mutex::new(RateTracker::default()),
            started: SystemTime::now(),
        }
    }

    /// Keeps a baseline reading of every cgroup so a request can report a rate at once.
    pub async fn run_sampler(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            if let Err(e) = self.summary_once().await {
                tracing::debug!(error = %e, "sampling container stats failed");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(SAMPLE_PERIOD) => {}
            }
        }
    }

    /// The Summary; when some CPU rate is still unknown (no baseline yet), samples again after
    /// a second so the answer has rates.
    pub async fn summary(&self) -> Result<Value, String> {
        let (v, complete) = self.summary_once().await?;
        if complete {
            return Ok(v);
        }
        tokio::time::sleep(MIN_WINDOW + Duration::from_millis(50)).await;
        Ok(self.summary_once().await?.0)
    }

    fn observe(&self, key: &str, total: Option<u64>, now: Instant) -> Option<u64> {
        let total = total?;
        let mut r = self.rates.lock().unwrap_or_else(|p| p.into_inner());
        r.observe(key, total, now)
    }

    /// One pass: the Summary and whether every CPU rate was known.
    async fn summary_once(&self) -> Result<(Value, bool), String> {
        let containers = self.runtime.list_containers().await.map_err(|e| e.to_string())?;
        let now = Instant::now();
        let wall = SystemTime::now();
        let time = rfc3339(wall);
        let mut complete = true;
        let mut live = std::collections::HashSet::new();

        // Node.
        let node_cpu = read(Path::new("/proc/stat")).and_then(|s| parse_proc_stat_busy_ns(&s));
        let node_rate = self.observe("/", node_cpu, now);
        live.insert("/".to_string());
        complete &= node_rate.is_some() || node_cpu.is_none();
        let mut node_mem = json!({ "time": time });
        if let Some((total, avail, free)) = read(Path::new("/proc/meminfo")).and_then(|s| parse_meminfo(&s)) {
            node_mem["availableBytes"] = json!(avail);
            node_mem["usageBytes"] = json!(total.saturating_sub(free));
            node_mem["workingSetBytes"] = json!(total.saturating_sub(avail));
        }
        let node_usage = Usage { cpu_total_ns: node_cpu, nanocores: node_rate, memory: None };

        // Pods and their running containers.
        let mut pods: BTreeMap<String, (crate::agent::runtime::PodRef, Vec<Value>, Option<SystemTime>)> =
            BTreeMap::new();
        for c in containers {
            let ContainerState::Running { started_at } = c.state else { continue };
            let rel = format!("{}/pod{}/{}", self.cgroup_root, c.pod.uid, c.id);
            let total = self.layout.cpu_usage_ns(&rel);
            let rate = self.observe(&rel, total, now);
            live.insert(rel.clone());
            complete &= rate.is_some() || total.is_none();
            let u = Usage { cpu_total_ns: total, nanocores: rate, memory: self.layout.memory(&rel) };
            let entry = pods.entry(c.pod.uid.clone()).or_insert_with(|| (c.pod.clone(), Vec::new(), None));
            entry.2 = Some(entry.2.map_or(started_at, |s: SystemTime| s.min(started_at)));
            entry.1.push(json!({
                "name": c.name,
                "startTime": rfc3339(started_at),
                "cpu": cpu_json(&u, &time),
                "memory": memory_json(&u, &time),
            }));
        }
        let mut pod_list = Vec::new();
        for (uid, (pod, containers, started)) in pods {
            let rel = format!("{}/pod{uid}", self.cgroup_root);
            let total = self.layout.cpu_usage_ns(&rel);
            let rate = self.observe(&rel, total, now);
            live.insert(rel.clone());
            complete &= rate.is_some() || total.is_none();
            let u = Usage { cpu_total_ns: total, nanocores: rate, memory: self.layout.memory(&rel) };
            pod_list.push(json!({
                "podRef": { "name": pod.name, "namespace": pod.namespace, "uid": pod.uid },
                "startTime": rfc3339(started.unwrap_or(wall)),
                "containers": containers,
                "cpu": cpu_json(&u, &time),
                "memory": memory_json(&u, &time),
            }));
        }
        self.rates.lock().unwrap_or_else(|p| p.into_inner()).retain(&live);

        let summary = json!({
            "node": {
                "nodeName": self.node_name,
                "startTime": rfc3339(self.started),
                "cpu": cpu_json(&node_usage, &time),
                "memory": node_mem,
            },
            "pods": pod_list,
        });
        Ok((summary, complete))
    }
}

/// The Summary as the kubelet's `/metrics/resource` (Prometheus text, what metrics-server
/// scrapes): cumulative CPU seconds and working sets of the node, pods and containers, with
/// millisecond timestamps.
pub fn resource_metrics_text(summary: &Value) -> String {
    fn ms(v: &Value) -> Option<i64> {
        v.as_str().and_then(|t| DateTime::parse_from_rfc3339(t).ok()).map(|t| t.timestamp_millis())
    }
    fn esc(v: &Value) -> String {
        v.as_str().unwrap_or("").replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
    }
    let mut families: Vec<(&str, &str, &str, Vec<String>)> = vec![
        ("node_cpu_usage_seconds_total", "counter", "Cumulative cpu time consumed by the node in core-seconds", vec![]),
        ("node_memory_working_set_bytes", "gauge", "Current working set of the node in bytes", vec![]),
        ("pod_cpu_usage_seconds_total", "counter", "Cumulative cpu time consumed by the pod in core-seconds", vec![]),
        ("pod_memory_working_set_bytes", "gauge", "Current working set of the pod in bytes", vec![]),
        (
            "container_cpu_usage_seconds_total",
            "counter",
            "Cumulative cpu time consumed by the container in core-seconds",
            vec![],
        ),
        ("container_memory_working_set_bytes", "gauge", "Current working set of the container in bytes", vec![]),
    ];
    let mut push = |i: usize, labels: String, stats: &Value, cpu: bool| {
        let (v, t) = if cpu {
            let ns = stats.pointer("/cpu/usageCoreNanoSeconds").and_then(Value::as_u64);
            (ns.map(|n| format!("{}", n as f64 / 1e9)), stats.pointer("/cpu/time"))
        } else {
            let b = stats.pointer("/memory/workingSetBytes").and_then(Value::as_u64);
            (b.map(|b| b.to_string()), stats.pointer("/memory/time"))
        };
        if let Some(v) = v {
            let ts = t.and_then(ms).map(|t| format!(" {t}")).unwrap_or_default();
            let labels = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
            let line = format!("{}{labels} {v}{ts}", families[i].0);
            families[i].3.push(line);
        }
    };
    let node = &summary["node"];
    push(0, String::new(), node, true);
    push(1, String::new(), node, false);
    for p in summary["pods"].as_array().into_iter().flatten() {
        let pl = format!("namespace=\"{}\",pod=\"{}\"", esc(&p["podRef"]["namespace"]), esc(&p["podRef"]["name"]));
        push(2, pl.clone(), p, true);
        push(3, pl.clone(), p, false);
        for c in p["containers"].as_array().into_iter().flatten() {
            let cl = format!("container=\"{}\",{pl}", esc(&c["name"]));
            push(4, cl.clone(), c, true);
            push(5, cl, c, false);
        }
    }
    let mut out = String::new();
    for (name, kind, help, lines) in families {
        out.push_str(&format!("# HELP {name} [STABLE] {help}\n# TYPE {name} {kind}\n"));
        for l in lines {
            out.push_str(&l);
            out.push('\n');
        }
    }
    out.push_str("# HELP scrape_error [ALPHA] 1 if there was an error while getting container metrics, 0 otherwise\n");
    out.push_str("# TYPE scrape_error gauge\nscrape_error 0\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_v2_cpu_stat_usage_is_read_in_nanoseconds() {
        let t = "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 0\n";
        assert_eq!(parse_cpu_stat_usage_ns(t), Some(1_500_000));
        assert_eq!(parse_cpu_stat_usage_ns("user_usec 3\n"), None);
    }

    #[test]
    fn working_set_is_usage_less_inactive_file_and_never_negative() {
        let stat = "anon 100\nfile 900\ninactive_file 300\nactive_file 600\n";
        assert_eq!(stat_value(stat, "inactive_file"), Some(300));
        assert_eq!(stat_value(stat, "file"), Some(900), "keys match whole words only");
        assert_eq!(working_set(1000, 300), 700);
        assert_eq!(working_set(100, 300), 0);
        assert_eq!(parse_single("4096\n"), Some(4096));
        assert_eq!(parse_single("max\n"), None);
    }

    #[test]
    fn proc_stat_busy_time_leaves_out_idle_and_iowait() {
        let t = "cpu  100 10 50 1000 40 5 5 0 0 0\ncpu0 50 5 25 500 20 2 3 0 0 0\nintr 1\n";
        // (100 + 10 + 50 + 5 + 5 + 0) ticks of 10 ms.
        assert_eq!(parse_proc_stat_busy_ns(t), Some(170 * 10_000_000));
        assert_eq!(parse_proc_stat_busy_ns("cpu0 1 2 3 4\n"), None);
        assert_eq!(parse_proc_stat_busy_ns("cpu x y\n"), None);
    }

    #[test]
    fn meminfo_gives_total_available_and_free_in_bytes() {
        let t = "MemTotal:       2048 kB\nMemFree:         512 kB\nMemAvailable:   1024 kB\n";
        assert_eq!(parse_meminfo(t), Some((2048 * 1024, 1024 * 1024, 512 * 1024)));
        // Old kernels without MemAvailable fall back to MemFree.
        assert_eq!(parse_meminfo("MemTotal: 10 kB\nMemFree: 4 kB\n"), Some((10240, 4096, 4096)));
        assert_eq!(parse_meminfo("nothing\n"), None);
    }

    #[test]
    fn the_rate_is_cpu_time_over_wall_time_between_readings_a_second_apart() {
        let t0 = Instant::now();
        let mut r = RateTracker::default();
        assert_eq!(r.observe("c", 0, t0), None, "one reading gives no rate");
        // Too close to the baseline: no rate yet, and the baseline stays.
        assert_eq!(r.observe("c", 10_000, t0 + Duration::from_millis(100)), None);
        // Half a core over two seconds.
        assert_eq!(r.observe("c", 1_000_000_000, t0 + Duration::from_secs(2)), Some(500_000_000));
        // A close reading repeats the last rate.
        assert_eq!(r.observe("c", 1_000_000_100, t0 + Duration::from_millis(2100)), Some(500_000_000));
        // A counter that went backwards (re-created cgroup) restarts the measurement.
        assert_eq!(r.observe("c", 5, t0 + Duration::from_secs(4)), None);
        r.retain(&Default::default());
        assert_eq!(r.observe("c", 10, t0 + Duration::from_secs(6)), None, "forgotten");
    }

    #[test]
    fn layouts_are_detected_and_read_from_the_container_cgroup_path() {
        let d = tempfile::tempdir().unwrap();
        // cgroup v1 with separate cpuacct and memory hierarchies (as on this project's hosts).
        let cg = d.path().join("cpuacct/skiff/podu1/c1");
        std::fs::create_dir_all(&cg).unwrap();
        std::fs::write(d.path().join("cpuacct/cpuacct.usage"), "1\n").unwrap();
        std::fs::write(cg.join("cpuacct.usage"), "123456789\n").unwrap();
        let mg = d.path().join("memory/skiff/podu1/c1");
        std::fs::create_dir_all(&mg).unwrap();
        std::fs::write(d.path().join("memory/memory.usage_in_bytes"), "1\n").unwrap();
        std::fs::write(mg.join("memory.usage_in_bytes"), "10000\n").unwrap();
        std::fs::write(mg.join("memory.stat"), "inactive_file 1\ntotal_inactive_file 4000\n").unwrap();
        let l = CgroupLayout::detect_at(d.path());
        assert!(matches!(l, CgroupLayout::V1 { .. }), "{l:?}");
        assert_eq!(l.cpu_usage_ns("skiff/podu1/c1"), Some(123456789));
        assert_eq!(l.memory("skiff/podu1/c1"), Some((10000, 6000)));
        assert_eq!(l.cpu_usage_ns("skiff/podu1/gone"), None);

        // cgroup v2.
        let d2 = tempfile::tempdir().unwrap();
        std::fs::write(d2.path().join("cgroup.controllers"), "cpu memory\n").unwrap();
        let c = d2.path().join("skiff/podu1/c1");
        std::fs::create_dir_all(&c).unwrap();
        std::fs::write(c.join("cpu.stat"), "usage_usec 42\n").unwrap();
        std::fs::write(c.join("memory.current"), "8192\n").unwrap();
        std::fs::write(c.join("memory.stat"), "inactive_file 4096\n").unwrap();
        let l = CgroupLayout::detect_at(d2.path());
        assert_eq!(l, CgroupLayout::V2(d2.path().to_path_buf()));
        assert_eq!(l.cpu_usage_ns("skiff/podu1/c1"), Some(42_000));
        assert_eq!(l.memory("skiff/podu1/c1"), Some((8192, 4096)));
    }

    #[tokio::test]
    async fn the_summary_reports_running_containers_and_their_pod_with_rates_and_working_sets() {
        use crate::agent::runtime::{ContainerStatus, ImageRef, PodRef, Sandbox};
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("cgroup.controllers"), "cpu memory\n").unwrap();
        let pod_dir = d.path().join("kube/podu1");
        let c_dir = pod_dir.join("c1");
        std::fs::create_dir_all(&c_dir).unwrap();
        let write = |dir: &Path, usec: u64, mem: u64| {
            std::fs::write(dir.join("cpu.stat"), format!("usage_usec {usec}\n")).unwrap();
            std::fs::write(dir.join("memory.current"), format!("{mem}\n")).unwrap();
            std::fs::write(dir.join("memory.stat"), "inactive_file 1000\n").unwrap();
        };
        write(&pod_dir, 0, 9000);
        write(&c_dir, 0, 5000);
        let rt = Arc::new(crate::agent::kubelet::fake_runtime::FakeRuntime::new());
        let pod = PodRef { uid: "u1".into(), namespace: "default".into(), name: "web".into() };
        let status = |id: &str, state| ContainerStatus {
            id: id.into(),
            pod: pod.clone(),
            name: id.replace('c', "app"),
            image: ImageRef { name: "localhost/busybox:1".into(), id: "sha256:1".into() },
            state,
            restart_count: 0,
            log_path: d.path().join(format!("{id}.log")),
        };
        let sandbox = Sandbox { pod: pod.clone(), ip: None };
        rt.insert(sandbox.clone(), status("c1", ContainerState::Running { started_at: SystemTime::now() }));
        let exited = ContainerState::Exited {
            exit_code: 0,
            reason: "Completed".into(),
            started_at: None,
            finished_at: SystemTime::now(),
        };
        rt.insert(sandbox, status("c2", exited));
        let p = StatsProvider::with_layout("n1", "/kube/", rt, CgroupLayout::V2(d.path().to_path_buf()));

        let (_, complete) = p.summary_once().await.unwrap();
        assert!(!complete, "the first pass only takes a baseline");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        // Half a second of CPU per ~1.1 s in the container, a whole second in the pod.
        write(&c_dir, 550_000, 5000);
        write(&pod_dir, 1_100_000, 9000);
        let (s, complete) = p.summary_once().await.unwrap();
        assert!(complete, "{s}");
        assert_eq!(s["node"]["nodeName"], "n1");
        assert!(s["node"]["memory"]["workingSetBytes"].as_u64().is_some_and(|m| m > 0), "{s}");
        let pods = s["pods"].as_array().unwrap();
        assert_eq!(pods.len(), 1);
        assert_eq!(pods[0]["podRef"], json!({"name": "web", "namespace": "default", "uid": "u1"}));
        let containers = pods[0]["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 1, "only running containers: {s}");
        assert_eq!(containers[0]["name"], "app1");
        let nc = containers[0]["cpu"]["usageNanoCores"].as_u64().unwrap();
        assert!((350_000_000..=520_000_000).contains(&nc), "container rate {nc}");
        assert_eq!(containers[0]["cpu"]["usageCoreNanoSeconds"], 550_000_000u64);
        assert_eq!(containers[0]["memory"]["workingSetBytes"], 4000);
        let pc = pods[0]["cpu"]["usageNanoCores"].as_u64().unwrap();
        assert!((700_000_000..=1_020_000_000).contains(&pc), "pod rate {pc}");
        assert_eq!(pods[0]["memory"]["workingSetBytes"], 8000);
    }

    #[test]
    fn the_summary_renders_as_prometheus_resource_metrics() {
        let s = json!({
            "node": {"cpu": {"time": "2026-01-01T00:00:00Z", "usageCoreNanoSeconds": 1_500_000_000u64},
                     "memory": {"time": "2026-01-01T00:00:00Z", "workingSetBytes": 2048}},
            "pods": [{"podRef": {"name": "web", "namespace": "default", "uid": "u1"},
                      "cpu": {"time": "2026-01-01T00:00:00Z", "usageCoreNanoSeconds": 500_000_000u64},
                      "memory": {"time": "2026-01-01T00:00:00Z", "workingSetBytes": 100},
                      "containers": [{"name": "app", "cpu": {"time": "2026-01-01T00:00:00Z", "usageCoreNanoSeconds": 250_000_000u64},
                                      "memory": {"time": "2026-01-01T00:00:00Z"}}]}]
        });
        let t = resource_metrics_text(&s);
        assert!(
            t.contains("# TYPE node_cpu_usage_seconds_total counter\nnode_cpu_usage_seconds_total 1.5 1767225600000\n"),
            "{t}"
        );
        assert!(t.contains("node_memory_working_set_bytes 2048 1767225600000\n"), "{t}");
        assert!(
            t.contains("pod_cpu_usage_seconds_total{namespace=\"default\",pod=\"web\"} 0.5 1767225600000\n"),
            "{t}"
        );
        assert!(
            t.contains("container_cpu_usage_seconds_total{container=\"app\",namespace=\"default\",pod=\"web\"} 0.25 "),
            "{t}"
        );
        // A value the Summary lacks is left out, not made up.
        assert!(!t.contains("container_memory_working_set_bytes{"), "{t}");
        assert!(t.ends_with("scrape_error 0\n"), "{t}");
    }
}
