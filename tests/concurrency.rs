//! Optimistic concurrency under load: many writers updating one object through kube-rs.

mod common;
use common::TestServer;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, PostParams};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_updates_succeed_once_each_or_conflict_and_generations_add_up() {
    let s = tokio::task::spawn_blocking(|| TestServer::start(&[])).await.unwrap();
    let yaml = std::fs::read_to_string(&s.kubeconfig).unwrap();
    let cfg = skiff::server::kube_config(&yaml).await.unwrap();
    let client = kube::Client::try_from(cfg).unwrap();
    let api: Api<Deployment> = Api::namespaced(client, "default");
    let d: Deployment = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "hot"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "hot"}},
            "template": {"metadata": {"labels": {"app": "hot"}}, "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}}
    }))
    .unwrap();
    let created = api.create(&PostParams::default(), &d).await.unwrap();
    let first_rv: i64 = created.metadata.resource_version.clone().unwrap().parse().unwrap();

    // Stale writes: everyone starts from the same resourceVersion; exactly one may win.
    let mut stale = Vec::new();
    for i in 0..20 {
        let (api, mut obj) = (api.clone(), created.clone());
        stale.push(tokio::spawn(async move {
            obj.spec
                .as_mut()
                .unwrap()
                .template
                .metadata
                .get_or_insert_default()
                .annotations
                .get_or_insert_default()
                .insert("stale".into(), i.to_string());
            api.replace("hot", &PostParams::default(), &obj).await
        }));
    }
    let mut won = 0;
    for t in stale {
        match t.await.unwrap() {
            Ok(_) => won += 1,
            Err(kube::Error::Api(e)) => assert_eq!(e.code, 409, "{e:?}"),
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(won, 1, "exactly one stale writer may win");

    // 100 writers retrying on conflict: each succeeds exactly once, each bumps generation once.
    let mut tasks = Vec::new();
    for i in 0..100 {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0;
            loop {
                let mut obj = api.get("hot").await.unwrap();
                obj.spec
                    .as_mut()
                    .unwrap()
                    .template
                    .metadata
                    .get_or_insert_default()
                    .annotations
                    .get_or_insert_default()
                    .insert(format!("w{i}"), "1".into());
                match api.replace("hot", &PostParams::default(), &obj).await {
                    Ok(_) => return conflicts,
                    Err(kube::Error::Api(e)) if e.code == 409 => conflicts += 1,
                    Err(e) => panic!("writer {i}: {e}"),
                }
            }
        }));
    }
    let mut conflicts = 0;
    for t in tasks {
        conflicts += t.await.unwrap();
    }
    let last = api.get("hot").await.unwrap();
    let annotations = last.spec.unwrap().template.metadata.unwrap().annotations.unwrap();
    assert_eq!((0..100).filter(|i| annotations.contains_key(&format!("w{i}"))).count(), 100, "no update may be lost");
    assert_eq!(last.metadata.generation, Some(1 + 1 + 100), "generation counts every spec change");
    let last_rv: i64 = last.metadata.resource_version.unwrap().parse().unwrap();
    assert!(
        last_rv >= first_rv + 101,
        "resourceVersion {last_rv} must have advanced at least once per write from {first_rv}"
    );
    eprintln!("100 writers: {conflicts} conflicts retried");
    tokio::task::spawn_blocking(move || drop(s)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_only_lists_and_gets_return_partial_object_metadata() {
    use k8s_openapi::api::core::v1::ConfigMap;
    let s = tokio::task::spawn_blocking(|| TestServer::start(&[])).await.unwrap();
    let yaml = std::fs::read_to_string(&s.kubeconfig).unwrap();
    let client = kube::Client::try_from(skiff::server::kube_config(&yaml).await.unwrap()).unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let cm: ConfigMap = serde_json::from_value(
        serde_json::json!({"metadata": {"name": "m", "labels": {"a": "b"}}, "data": {"secret": "v4lue-only-in-data"}}),
    )
    .unwrap();
    api.create(&PostParams::default(), &cm).await.unwrap();
    let list = api.list_metadata(&kube::api::ListParams::default().labels("a=b")).await.unwrap();
    assert_eq!(list.items.len(), 1);
    assert_eq!(list.items[0].metadata.name.as_deref(), Some("m"));
    let one = api.get_metadata("m").await.unwrap();
    assert_eq!(one.metadata.labels.unwrap().get("a").map(String::as_str), Some("b"));
    // On the wire: metadata alone, in a PartialObjectMetadataList, for lists and watches.
    const AS_META: &str = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json";
    let raw = |path: &str, accept: &str| {
        let req = http::Request::get(path).header("accept", accept).body(Vec::new()).unwrap();
        client.request_text(req)
    };
    let text = raw("/api/v1/namespaces/default/configmaps?labelSelector=a%3Db", AS_META).await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["kind"], "PartialObjectMetadataList", "{text}");
    assert_eq!(v["items"][0]["kind"], "PartialObjectMetadata", "{text}");
    assert!(v["items"][0].get("data").is_none() && !text.contains("v4lue-only-in-data"), "{text}");
    assert!(v["items"][0]["metadata"]["resourceVersion"].as_str().is_some_and(|r| !r.is_empty()), "{text}");
    let rv = v["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    let watch = {
        let client = client.clone();
        let path = format!(
            "/api/v1/namespaces/default/configmaps?watch=1&labelSelector=a%3Db&resourceVersion={rv}&timeoutSeconds=2"
        );
        tokio::spawn(async move {
            let req = http::Request::get(path.as_str())
                .header("accept", "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1")
                .body(Vec::new())
                .unwrap();
            client.request_text(req).await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut cm2 = cm.clone();
    cm2.metadata.name = Some("m2".into());
    api.create(&PostParams::default(), &cm2).await.unwrap();
    let events = watch.await.unwrap().unwrap();
    let first: serde_json::Value = serde_json::from_str(events.lines().next().unwrap_or("{}")).unwrap();
    assert_eq!(first["type"], "ADDED", "{events}");
    assert_eq!(first["object"]["kind"], "PartialObjectMetadata", "{events}");
    assert_eq!(first["object"]["metadata"]["name"], "m2", "{events}");
    assert!(!events.contains("v4lue-only-in-data"), "{events}");
    tokio::task::spawn_blocking(move || drop(s)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_4xx_statuses_never_500s() {
    let s = tokio::task::spawn_blocking(|| TestServer::start(&[])).await.unwrap();
    let yaml = std::fs::read_to_string(&s.kubeconfig).unwrap();
    let client = kube::Client::try_from(skiff::server::kube_config(&yaml).await.unwrap()).unwrap();
    let post = |body: Vec<u8>, ct: &'static str| {
        let client = client.clone();
        async move {
            let req = http::Request::post("/api/v1/namespaces/default/configmaps")
                .header("content-type", ct)
                .body(body)
                .unwrap();
            match client.request_text(req).await {
                Ok(t) => panic!("expected an error, got {t}"),
                Err(kube::Error::Api(e)) => (e.code, e.message),
                Err(e) => panic!("{e}"),
            }
        }
    };
    let (code, msg) = post(b"{not json".to_vec(), "application/json").await;
    assert_eq!(code, 400, "{msg}");
    let (code, msg) =
        post(br#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"x"}}"#.to_vec(), "application/json").await;
    assert_eq!(code, 400, "{msg}");
    // Upstream's decoder words another kind as a failed conversion.
    assert!(msg.starts_with("Pod in version \"v1\" cannot be handled as a ConfigMap"), "{msg}");
    let big = format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"big"}},"data":{{"a":"{}"}}}}"#,
        "x".repeat(4 << 20)
    );
    let (code, msg) = post(big.into_bytes(), "application/json").await;
    assert_eq!(code, 413, "{msg}");
    let (code, msg) =
        post(br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"UPPER"}}"#.to_vec(), "application/json")
            .await;
    assert_eq!(code, 422, "{msg}");
    let (code, msg) = post(b"k8s\0\x0a\xff".to_vec(), "application/vnd.kubernetes.protobuf").await;
    assert_eq!(code, 400, "{msg}");
    let (code, msg) = post(
        br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"},"data":{"a":1}}"#.to_vec(),
        "application/json",
    )
    .await;
    assert_eq!(code, 400, "{msg}");
    tokio::task::spawn_blocking(move || drop(s)).await.unwrap();
}
