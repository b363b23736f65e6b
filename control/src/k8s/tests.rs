use super::*;

/// `kubectl get svc,endpointslices -n shop -o yaml` output, trimmed of nothing kube-proxy
/// would need and keeping the noise it ignores.
const LIST: &str = r#"
apiVersion: v1
items:
- apiVersion: v1
  kind: Service
  metadata:
    annotations:
      kubectl.kubernetes.io/last-applied-configuration: |
        {"apiVersion":"v1","kind":"Service"}
    creationTimestamp: "2024-05-02T10:11:12Z"
    name: web
    namespace: shop
    resourceVersion: "123456"
    uid: 5d0e6c1c-0000-4000-8000-000000000001
  spec:
    clusterIP: 10.96.10.1
    clusterIPs:
    - 10.96.10.1
    externalIPs:
    - 10.186.153.50
    externalTrafficPolicy: Local
    internalTrafficPolicy: Cluster
    ipFamilies:
    - IPv4
    ipFamilyPolicy: SingleStack
    ports:
    - name: http
      nodePort: 31234
      port: 80
      protocol: TCP
      targetPort: 8080
    - name: metrics
      nodePort: 31999
      port: 9100
      protocol: TCP
      targetPort: metrics
    selector:
      app: web
    sessionAffinity: ClientIP
    sessionAffinityConfig:
      clientIP:
        timeoutSeconds: 600
    type: LoadBalancer
  status:
    loadBalancer:
      ingress:
      - ip: 10.186.153.200
- addressType: IPv4
  apiVersion: discovery.k8s.io/v1
  endpoints:
  - addresses:
    - 10.20.9.60
    conditions:
      ready: true
      serving: true
      terminating: false
    nodeName: node-103
    targetRef:
      kind: Pod
      name: web-7d4b9c-abcde
      namespace: shop
  - addresses:
    - 10.20.4.11
    conditions:
      ready: false
      serving: true
      terminating: true
    nodeName: node-104
  - addresses:
    - 10.20.4.12
    conditions:
      ready: false
      serving: false
      terminating: false
    nodeName: node-104
  - addresses:
    - 10.20.4.13
    conditions: {}
    nodeName: node-104
  kind: EndpointSlice
  metadata:
    generateName: web-
    labels:
      endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
      kubernetes.io/service-name: web
    name: web-x7k2p
    namespace: shop
  ports:
  - name: http
    port: 8080
    protocol: TCP
  - name: metrics
    port: 9102
    protocol: TCP
kind: List
metadata:
  resourceVersion: ""
"#;

const DNS: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
spec:
  clusterIP: 10.96.0.10
  ports:
  - name: dns
    port: 53
    protocol: UDP
    targetPort: 53
  - name: dns-tcp
    port: 53
    protocol: TCP
    targetPort: 53
  type: ClusterIP
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
addressType: IPv4
metadata:
  name: kube-dns-abcde
  namespace: kube-system
  labels:
    kubernetes.io/service-name: kube-dns
ports:
- name: dns-tcp
  port: 53
  protocol: TCP
- name: dns
  port: 53
  protocol: UDP
endpoints:
- addresses: [10.20.9.41]
  conditions: { ready: true }
  nodeName: node-103
---
apiVersion: v1
kind: Service
metadata: { name: ext, namespace: default }
spec: { type: ExternalName, externalName: example.com }
---
apiVersion: v1
kind: Service
metadata: { name: headless, namespace: default }
spec: { clusterIP: None, ports: [{ port: 80 }] }
---
apiVersion: v1
kind: ConfigMap
metadata: { name: cm }
"#;

fn build(text: &str) -> (Cache, Vec<String>) {
    let mut notes = Vec::new();
    let objs = parse(text, &mut notes).unwrap();
    let mut c = Cache::default();
    c.merge(objs);
    (c, notes)
}

#[test]
fn load_balancer_service_with_local_policy_and_affinity() {
    let (c, _) = build(LIST);
    let specs = c.specs("shop/web", "node-103", Scheduler::Rr);
    assert_eq!(specs.len(), 2);
    let http = &specs[0];
    assert_eq!(http.name, "shop/web:http");
    assert_eq!((http.proto, http.port), (PROTO_TCP, 80));
    assert_eq!(http.cluster_ip, Some(Ipv4Addr::new(10, 96, 10, 1)));
    assert_eq!(http.node_port, Some(31234));
    assert_eq!(http.external_ips, vec![Ipv4Addr::new(10, 186, 153, 50)]);
    assert_eq!(http.lb_ips, vec![Ipv4Addr::new(10, 186, 153, 200)]);
    assert_eq!(http.affinity_timeout, Some(600));
    assert!(http.etp_local);
    // ready → Ready (local on this node); terminating → Terminating; not ready and not
    // terminating → left out; no conditions → ready.
    let b: Vec<_> = http
        .backends
        .iter()
        .map(|b| (b.addr.to_string(), b.port, b.state, b.local))
        .collect();
    assert_eq!(
        b,
        vec![
            ("10.20.4.11".into(), 8080, BackendState::Terminating, false),
            ("10.20.4.13".into(), 8080, BackendState::Ready, false),
            ("10.20.9.60".into(), 8080, BackendState::Ready, true),
        ]
    );
    // targetPort by name resolves through the slice's port of the same name.
    assert_eq!(specs[1].backends[0].port, 9102);
    assert_eq!(specs[1].node_port, Some(31999));
    assert_ne!(specs[0].id, specs[1].id);
}

#[test]
fn dns_udp_and_tcp_and_ignored_kinds() {
    let (c, notes) = build(DNS);
    let specs = c.specs("kube-system/kube-dns", "node-103", Scheduler::Rr);
    assert_eq!(specs.len(), 2);
    let udp = specs.iter().find(|s| s.proto == PROTO_UDP).unwrap();
    assert_eq!(udp.cluster_ip, Some(Ipv4Addr::new(10, 96, 0, 10)));
    assert_eq!(udp.node_port, None, "ClusterIP type has no node port");
    assert_eq!(udp.affinity_timeout, None);
    assert!(!udp.etp_local);
    assert_eq!(udp.backends.len(), 1);
    assert_eq!(udp.backends[0].port, 53);
    assert!(c.specs("default/ext", "n", Scheduler::Rr).is_empty());
    assert!(c.specs("default/headless", "n", Scheduler::Rr).is_empty());
    assert!(notes.iter().any(|n| n.contains("ConfigMap")), "{notes:?}");
}

#[test]
fn a_later_slice_alone_updates_its_service() {
    let (mut c, _) = build(DNS);
    let update = r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
addressType: IPv4
metadata:
  name: kube-dns-abcde
  namespace: kube-system
  labels: { kubernetes.io/service-name: kube-dns }
ports: [{ name: dns, port: 53, protocol: UDP }]
endpoints:
- addresses: [10.20.9.41]
  conditions: { ready: false, serving: true, terminating: true }
- addresses: [10.20.9.42]
  conditions: { ready: true }
"#;
    let mut notes = Vec::new();
    let touched = c.merge(parse(update, &mut notes).unwrap());
    assert_eq!(
        touched.into_iter().collect::<Vec<_>>(),
        vec!["kube-system/kube-dns"]
    );
    let specs = c.specs("kube-system/kube-dns", "node-103", Scheduler::Rr);
    let udp = specs.iter().find(|s| s.proto == PROTO_UDP).unwrap();
    assert_eq!(udp.backends.len(), 2);
    assert_eq!(udp.backends[0].state, BackendState::Terminating);
    assert_eq!(udp.backends[1].state, BackendState::Ready);
    // The TCP port lost its slice port: no backends.
    assert!(
        specs
            .iter()
            .find(|s| s.proto == PROTO_TCP)
            .unwrap()
            .backends
            .is_empty()
    );
}

#[test]
fn bad_manifests_name_the_field() {
    let mut notes = Vec::new();
    let e = parse(
        "kind: Service\nmetadata: {name: a}\nspec: {clusterIP: 10.96.0.300, ports: [{port: 80}]}\n",
        &mut notes,
    )
    .unwrap_err();
    assert!(e.contains("spec.clusterIP"), "{e}");
    let e = parse(
        "kind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 70000}]}\n",
        &mut notes,
    )
    .unwrap_err();
    assert!(e.contains("spec.ports[0].port"), "{e}");
    let e = parse(
        "kind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80, protocol: QUIC}]}\n",
        &mut notes,
    )
    .unwrap_err();
    assert!(e.contains("protocol"), "{e}");
    let e = parse(
        "kind: List\nitems:\n- kind: EndpointSlice\n  addressType: IPv4\n  metadata: {name: s}\n",
        &mut notes,
    )
    .unwrap_err();
    assert!(e.contains("items[0]") && e.contains("service-name"), "{e}");
    assert!(parse("foo: [", &mut notes).is_err());
    assert!(parse("a: 1\n", &mut notes).unwrap_err().contains("no kind"));
}
