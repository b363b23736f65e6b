use super::*;
use std::path::Path;

pub(crate) const NODE_YAML: &str = r#"
workers: { cores: [0] }
ports:
  - { name: biz, device: biz, role: uplink, addresses: [10.186.153.103/24] }
  - { name: pod60, device: pod60, role: pod }
  - { name: pod41, device: pod41, role: pod }
routes:
  - { dst: 10.20.9.60/32, dev: pod60 }
  - { dst: 10.20.9.41/32, dev: pod41 }
  - { dst: 0.0.0.0/0, via: 10.186.153.254, dev: biz }
neighbors:
  - { ip: 10.186.153.254, mac: "02:af:03:00:00:02", dev: biz }
  - { ip: 10.20.9.60, mac: "02:af:01:00:00:02", dev: pod60 }
"#;

fn device(dev: &str) -> std::io::Result<([u8; 6], u16)> {
    let last = dev.len() as u8;
    Ok(([0x02, 0xaf, 0, 0, 0, last], 1500))
}

pub(crate) fn control() -> Control {
    let cfg = Config::parse(NODE_YAML, Path::new("node.yaml")).expect("valid");
    let tables = cfg.tables(&device).expect("tables");
    let shared = Shared::new(1024);
    for (ip, mac, port) in cfg.static_neighbours() {
        shared.neigh.set_static(ip, mac, port);
    }
    let mut c = Control::detached(cfg, tables, shared);
    c.device = Box::new(device);
    c
}

fn req(c: &Control, line: &str) -> Response {
    match parse_request(line) {
        Ok(r) => c.handle(r),
        Err(e) => Response::err(e),
    }
}

fn err(r: &Response) -> &str {
    assert!(!r.ok, "expected an error, got {r:?}");
    r.error.as_deref().unwrap_or("")
}

#[test]
fn malformed_and_unknown_requests_are_refused_with_the_field() {
    let c = control();
    let g0 = c.tables.load().generation;
    assert!(err(&req(&c, "{not json")).contains("bad request"));
    assert!(err(&req(&c, r#"{"op":"fly"}"#)).contains("unknown variant"));
    let e = err(&req(
        &c,
        r#"{"op":"route_add","dst":"10.1.0.0/16","dev":"biz","colour":"red"}"#,
    ))
    .to_string();
    assert!(e.contains("colour"), "{e}");
    let e = err(&req(
        &c,
        r#"{"op":"route_add","dst":"10.1.0.0/40","dev":"biz"}"#,
    ))
    .to_string();
    assert!(e.contains("dst") && e.contains("not an IPv4 prefix"), "{e}");
    let e = err(&req(
        &c,
        r#"{"op":"route_add","dst":"10.1.0.0/16","dev":"nope"}"#,
    ))
    .to_string();
    assert!(e.starts_with("dev: no port named"), "{e}");
    let e = err(&req(
        &c,
        r#"{"op":"route_add","dst":"10.1.0.0/16","via":"300.1.1.1","dev":"biz"}"#,
    ))
    .to_string();
    assert!(e.contains("via"), "{e}");
    let e = err(&req(
        &c,
        r#"{"op":"route_add","dst":"10.1.0.1/16","dev":"biz"}"#,
    ))
    .to_string();
    assert!(e.contains("host bits"), "{e}");
    let e = err(&req(
        &c,
        r#"{"op":"neigh_add","ip":"10.1.1.1","mac":"ff:ff:ff:ff:ff:ff","dev":"biz"}"#,
    ))
    .to_string();
    assert!(e.starts_with("mac:"), "{e}");
    let e = err(&req(&c, r#"{"op":"trace","in_port":"biz","frame":"0g"}"#)).to_string();
    assert!(e.starts_with("frame:"), "{e}");
    let big = format!(r#"{{"op":"status","x":"{}"}}"#, "a".repeat(MAX_REQUEST));
    assert!(err(&req(&c, &big)).contains("limit"));
    assert_eq!(c.tables.load().generation, g0, "nothing was published");
}

#[test]
fn route_add_conflict_replace_and_delete() {
    let c = control();
    let add = r#"{"op":"route_add","dst":"10.20.4.0/25","via":"10.186.153.254","dev":"biz"}"#;
    let r = req(&c, add);
    assert!(r.ok, "{r:?}");
    let t = c.tables.load();
    let g = t.generation;
    let route = t.fib.lookup(Ipv4Addr::new(10, 20, 4, 9)).expect("route");
    assert_eq!(route.len, 25);
    assert_eq!(
        route.nexthops[0].via,
        Some(Ipv4Addr::new(10, 186, 153, 254))
    );
    // The same prefix again conflicts and publishes nothing.
    assert!(err(&req(&c, add)).contains("already exists"));
    assert_eq!(c.tables.load().generation, g);
    let r = req(
        &c,
        r#"{"op":"route_replace","dst":"10.20.4.0/25","dev":"pod41"}"#,
    );
    assert!(r.ok);
    assert_eq!(
        c.tables
            .load()
            .fib
            .get(Ipv4Addr::new(10, 20, 4, 0), 25)
            .unwrap()
            .nexthops[0]
            .via,
        None
    );
    assert!(req(&c, r#"{"op":"route_del","dst":"10.20.4.0/25"}"#).ok);
    assert!(err(&req(&c, r#"{"op":"route_del","dst":"10.20.4.0/25"}"#)).contains("no route"));
    let list = req(&c, r#"{"op":"route_list"}"#).result.unwrap();
    assert_eq!(list[0]["dst"], "10.20.9.41/32");
    assert!(c.prog.apply.count() >= 3, "programming latency recorded");
}

#[test]
fn ecmp_validation_names_the_next_hop() {
    let c = control();
    let e = err(&req(
        &c,
        r#"{"op":"route_add","dst":"10.9.0.0/16","nexthops":[{"via":"10.186.153.254","dev":"biz"},{"via":"10.186.153.1","dev":"bad"}]}"#,
    ))
    .to_string();
    assert!(e.starts_with("nexthops[1].dev"), "{e}");
    let e = err(&req(
        &c,
        r#"{"op":"route_add","dst":"10.9.0.0/16","dev":"biz","nexthops":[{"dev":"biz"}]}"#,
    ))
    .to_string();
    assert!(e.contains("not both"), "{e}");
}

#[test]
fn neighbours_add_list_delete() {
    let c = control();
    let r = req(
        &c,
        r#"{"op":"neigh_add","ip":"10.186.153.7","mac":"02:00:00:00:00:07","dev":"biz"}"#,
    );
    assert!(r.ok, "{r:?}");
    let l = req(&c, r#"{"op":"neigh_list"}"#).result.unwrap();
    assert!(
        l.as_array()
            .unwrap()
            .iter()
            .any(|n| n["ip"] == "10.186.153.7" && n["state"] == "permanent" && n["dev"] == "biz")
    );
    assert!(req(&c, r#"{"op":"neigh_del","ip":"10.186.153.7"}"#).ok);
    assert!(err(&req(&c, r#"{"op":"neigh_del","ip":"10.186.153.7"}"#)).starts_with("ip:"));
}

#[test]
fn trace_shows_route_and_neighbour_and_changes_nothing() {
    let c = control();
    let frame = crate::trace::FrameSpec {
        src: Ipv4Addr::new(10, 20, 9, 60),
        dst: Ipv4Addr::new(10, 186, 200, 10),
        proto: 17,
        dport: 53,
        ..Default::default()
    }
    .build()
    .unwrap();
    let line = format!(
        r#"{{"op":"trace","in_port":"pod60","frame":"{}"}}"#,
        crate::trace::to_hex(&frame)
    );
    let before = c.shared.neigh.entries().len();
    let r = req(&c, &line);
    assert!(r.ok, "{r:?}");
    let t: crate::trace::TraceOut = serde_json::from_value(r.result.unwrap()).unwrap();
    assert_eq!(t.action, "output");
    assert_eq!(t.out_port.as_deref(), Some("biz"));
    let text = crate::trace::format(&t);
    assert!(
        text.contains("route") && text.contains("10.186.153.254"),
        "{text}"
    );
    assert!(t.steps.iter().any(|s| s.stage.contains("neigh")), "{text}");
    assert!(t.output.as_deref().unwrap().contains("ttl 63"), "{text}");
    assert_eq!(c.shared.neigh.entries().len(), before);
    let r = req(&c, r#"{"op":"trace","in_port":"nope","frame":"00"}"#);
    assert!(err(&r).starts_with("in_port"));
}

#[test]
fn stats_and_metrics_render() {
    let c = control();
    let s = req(&c, r#"{"op":"stats"}"#).result.unwrap();
    assert_eq!(s["drops"]["no_route"], 0);
    assert!(s["ports"]["biz"].is_object());
    let m = req(&c, r#"{"op":"metrics"}"#).result.unwrap();
    assert!(m.as_str().unwrap().contains("afgate_table_generation"));
}

#[test]
fn reload_applies_all_or_nothing() {
    let c = control();
    let g0 = c.tables.load().generation;
    // Invalid: a route through a port that does not exist.
    let bad = NODE_YAML.replace("dev: pod41 }", "dev: pod99 }");
    let r = c.handle(Request::Reload {
        config: bad,
        file: Some("bad.yaml".into()),
    });
    assert!(err(&r).contains("pod99"), "{r:?}");
    // Valid YAML but a port renamed: needs a restart, refused.
    let renamed = NODE_YAML
        .replace("name: pod41", "name: pod42")
        .replace("dev: pod41", "dev: pod42");
    assert!(
        err(&c.handle(Request::Reload {
            config: renamed,
            file: None
        }))
        .contains("ports[2].name")
    );
    assert_eq!(c.tables.load().generation, g0);
    assert!(
        c.tables
            .load()
            .fib
            .get(Ipv4Addr::new(10, 20, 9, 41), 32)
            .is_some()
    );
    // Valid: one route removed, one added, one neighbour removed.
    let good = NODE_YAML
        .replace(
            "  - { dst: 10.20.9.41/32, dev: pod41 }\n",
            "  - { dst: 10.20.4.0/25, via: 10.186.153.254, dev: biz }\n",
        )
        .replace(
            "  - { ip: 10.20.9.60, mac: \"02:af:01:00:00:02\", dev: pod60 }\n",
            "",
        );
    let r = c.handle(Request::Reload {
        config: good,
        file: None,
    });
    assert!(r.ok, "{r:?}");
    let v = r.result.unwrap();
    assert_eq!(v["routes"]["added"], 1);
    assert_eq!(v["routes"]["removed"], 1);
    assert_eq!(v["neighbors"]["removed"], 1);
    let t = c.tables.load();
    assert_eq!(t.generation, g0 + 1);
    assert!(t.fib.get(Ipv4Addr::new(10, 20, 9, 41), 32).is_none());
    assert!(t.fib.get(Ipv4Addr::new(10, 20, 4, 0), 25).is_some());
    assert!(
        c.shared
            .neigh
            .lookup(Ipv4Addr::new(10, 20, 9, 60))
            .is_none()
    );
    assert!(
        c.shared
            .neigh
            .lookup(Ipv4Addr::new(10, 186, 153, 254))
            .is_some()
    );
}

fn tmp_socket(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("afgate-api-test-{}-{tag}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    dir.join("afgate.sock")
}

#[test]
fn socket_round_trip_and_mode() {
    use std::os::unix::fs::PermissionsExt;
    let path = tmp_socket("rt");
    let l = bind(&path).unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // A second bind while the first is served refuses.
    let ctl = Arc::new(control());
    let stop = Arc::new(AtomicBool::new(false));
    let server = {
        let (ctl, stop) = (ctl.clone(), stop.clone());
        std::thread::spawn(move || serve(ctl, l, stop))
    };
    assert!(bind(&path).is_err());
    let v = crate::client::request(&path, &Request::Status).unwrap();
    assert_eq!(v["ports"], 3);
    let e = crate::client::request(
        &path,
        &Request::RouteDel {
            dst: crate::ctl::parse_prefix("10.99.0.0/16").unwrap(),
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("no route"), "{e}");
    stop.store(true, Ordering::Relaxed);
    wake(&path);
    server.join().unwrap();
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

/// A peer that is not root is refused by SO_PEERCRED, even when the socket file's mode
/// would let it connect. The child only makes async-signal-safe calls after fork.
#[test]
#[allow(unsafe_code)]
fn non_root_peer_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    if unsafe_getuid() != 0 {
        panic!("this test needs root (it setuid()s a child to 65534)");
    }
    let path = tmp_socket("peer");
    let l = bind(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    std::fs::set_permissions(
        path.parent().unwrap(),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let ctl = Arc::new(control());
    let stop = Arc::new(AtomicBool::new(false));
    let server = {
        let (ctl, stop) = (ctl.clone(), stop.clone());
        std::thread::spawn(move || serve(ctl, l, stop))
    };
    // Everything the child needs is prepared before fork.
    // SAFETY: sockaddr_un is plain data; zeroed is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_encoded_bytes();
    assert!(bytes.len() < addr.sun_path.len());
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let request = b"{\"op\":\"status\"}\n";
    let needle = b"permission denied";
    // SAFETY: fork(2) in a test process; the child below only calls async-signal-safe
    // functions (setuid, socket, connect, write, read, _exit) and touches no allocator.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: see above; every pointer passed refers to live stack data.
        unsafe {
            if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                libc::_exit(10);
            }
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            if fd < 0 {
                libc::_exit(11);
            }
            let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
            if libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len) != 0 {
                libc::_exit(12);
            }
            libc::write(fd, request.as_ptr().cast(), request.len());
            let mut buf = [0u8; 512];
            let mut n = 0usize;
            loop {
                let k = libc::read(fd, buf.as_mut_ptr().add(n).cast(), buf.len() - n);
                if k <= 0 {
                    break;
                }
                n += k as usize;
                if n == buf.len() {
                    break;
                }
            }
            let mut found = false;
            let mut i = 0;
            while i + needle.len() <= n {
                let mut j = 0;
                while j < needle.len() && buf[i + j] == needle[j] {
                    j += 1;
                }
                if j == needle.len() {
                    found = true;
                }
                i += 1;
            }
            libc::_exit(if found { 0 } else { 13 });
        }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    stop.store(true, Ordering::Relaxed);
    wake(&path);
    server.join().unwrap();
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
    assert!(libc::WIFEXITED(status), "child status {status}");
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "child (uid 65534) got the refusal (10 setuid, 11 socket, 12 connect, 13 no refusal)"
    );
}

#[allow(unsafe_code)]
fn unsafe_getuid() -> u32 {
    // SAFETY: getuid(2) cannot fail and has no preconditions.
    unsafe { libc::getuid() }
}

#[test]
fn wire_format_round_trips() {
    let reqs = vec![
        Request::Status,
        Request::RouteDel {
            dst: crate::ctl::parse_prefix("10.20.4.0/25").unwrap(),
        },
        Request::RouteAdd(
            crate::ctl::parse_route(&[
                "10.20.4.0/25".into(),
                "via".into(),
                "10.186.153.254".into(),
                "dev".into(),
                "biz".into(),
            ])
            .unwrap(),
        ),
        Request::Trace {
            in_port: "pod60".into(),
            frame: "00".into(),
            vlan: Some(1155),
        },
        Request::ConntrackList(svc::CtFilter {
            dport: Some(80),
            ..Default::default()
        }),
    ];
    for r in reqs {
        let line = r.to_line();
        assert!(line.contains("\"op\":"), "{line}");
        assert_eq!(parse_request(&line).unwrap(), r, "{line}");
    }
    assert_eq!(Request::RouteList.to_line(), r#"{"op":"route_list"}"#);
    let e = parse_request(r#"{"op":"status","extra":1}"#).unwrap_err();
    assert!(e.starts_with("bad request: status"), "{e}");
    assert!(
        parse_request(r#"["op"]"#)
            .unwrap_err()
            .contains("JSON object")
    );
    assert!(
        parse_request(r#"{"dst":"1.2.3.4/32"}"#)
            .unwrap_err()
            .contains("op: missing")
    );
}
