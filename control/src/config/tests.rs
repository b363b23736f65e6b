use super::*;
use std::path::Path;

const GOOD: &str = r#"
workers:
  cores: [0]
  poll: adaptive
ports:
  - name: biz
    device: biz
    role: uplink
    addresses: [10.186.153.103/24]
  - name: pod60
    device: pod60
    role: pod
routes:
  - { dst: 10.20.9.60/32, dev: pod60 }
  - { dst: 0.0.0.0/0, via: 10.186.153.254, dev: biz }
neighbors:
  - { ip: 10.186.153.254, mac: "02:00:00:00:fe:01", dev: biz }
passthrough:
  - { addr: 10.186.153.103, proto: tcp, port: 22 }
"#;

fn errors(text: &str) -> Vec<ConfigError> {
    Config::parse(text, Path::new("node.yaml"))
        .expect_err("should be rejected")
        .0
}

#[test]
fn lab_config_parses_and_builds_tables() {
    let c = Config::parse(GOOD, Path::new("node.yaml")).unwrap();
    let t = c.tables(&|_| Ok(([2, 0, 0, 0, 0, 1], 1500))).unwrap();
    assert_eq!(t.ports.len(), 2);
    // connected /24 + two static routes
    assert_eq!(t.fib.len(), 3);
    let r = t.fib.lookup("10.1.2.3".parse().unwrap()).unwrap();
    assert_eq!(r.nexthops[0].via, Some("10.186.153.254".parse().unwrap()));
    assert!(t.is_local("10.186.153.103".parse().unwrap()));
    assert_eq!(c.static_neighbours().len(), 1);
}

#[test]
fn bad_value_names_file_line_and_field() {
    let text = GOOD.replace(
        "addresses: [10.186.153.103/24]",
        "addresses: [10.186.153.103/33]",
    );
    let e = &errors(&text)[0];
    assert_eq!(e.file, Path::new("node.yaml"));
    assert_eq!(e.line, Some(9));
    assert_eq!(e.field, "ports[0].addresses[0]");
    assert!(e.message.contains("a.b.c.d/len"), "{}", e.message);
    assert!(
        e.to_string()
            .starts_with("node.yaml:9: ports[0].addresses[0]: "),
        "{e}"
    );
}

#[test]
fn unknown_field_is_rejected() {
    let text = GOOD.replace("    role: pod\n", "    role: pod\n    colour: blue\n");
    let e = &errors(&text)[0];
    assert_eq!(e.field, "ports[1].colour");
    assert!(
        e.message.contains("unknown field `colour`"),
        "{}",
        e.message
    );
    assert_eq!(e.line, Some(13));
    assert!(
        !e.message.starts_with("ports"),
        "path not repeated: {}",
        e.message
    );
}

#[test]
fn unknown_enum_value_lists_allowed() {
    let text = GOOD.replace("role: pod", "role: pods");
    let e = &errors(&text)[0];
    assert_eq!(e.field, "ports[1].role");
    assert!(
        e.message.contains("uplink") && e.message.contains("pod"),
        "{}",
        e.message
    );
}

#[test]
fn dangling_reference_points_at_its_line() {
    let text = GOOD.replace(
        "{ dst: 10.20.9.60/32, dev: pod60 }",
        "{ dst: 10.20.9.60/32, dev: pod61 }",
    );
    let e = &errors(&text)[0];
    assert_eq!(e.field, "routes[0].dev");
    assert_eq!(e.line, Some(14));
    assert!(e.message.contains("pod61"));
}

#[test]
fn every_problem_is_reported() {
    let text = GOOD.replace("cores: [0]", "cores: [0, 0]").replace(
        "name: pod60\n    device: pod60",
        "name: biz\n    device: biz",
    );
    let es = errors(&text);
    let fields: Vec<_> = es.iter().map(|e| e.field.as_str()).collect();
    assert!(fields.contains(&"workers.cores[1]"), "{fields:?}");
    assert!(fields.contains(&"ports[1].name"), "{fields:?}");
    assert!(fields.contains(&"ports[1].device"), "{fields:?}");
}

#[test]
fn malformed_yaml_has_a_line() {
    let e = &errors("ports:\n  - name: [unclosed\n")[0];
    assert!(e.line.is_some(), "{e}");
}

#[test]
fn out_of_range_numbers() {
    let text = GOOD.replace("poll: adaptive", "poll: adaptive\n  batch: 4");
    let e = &errors(&text)[0];
    assert_eq!(e.field, "workers.batch");
    assert!(e.message.contains("32-1024"));
}

#[test]
fn rt_priority_range_and_poll_mode() {
    let with = |poll: &str, prio: &str| {
        GOOD.replace(
            "poll: adaptive",
            &format!("poll: {poll}\n  rt_priority: {prio}"),
        )
    };
    let c = Config::parse(&with("wakeup", "10"), Path::new("node.yaml")).unwrap();
    assert_eq!(c.workers.rt_priority, Some(10));
    assert!(Config::parse(&with("adaptive", "99"), Path::new("node.yaml")).is_ok());

    let e = &errors(&with("wakeup", "0"))[0];
    assert_eq!(e.field, "workers.rt_priority");
    assert!(e.message.contains("1-99"), "{e}");
    let e = &errors(&with("wakeup", "100"))[0];
    assert_eq!(e.field, "workers.rt_priority");
    // A spinning worker above the kernel's receive work on its core would starve it.
    let e = &errors(&with("busy", "10"))[0];
    assert_eq!(e.field, "workers.rt_priority");
    assert!(e.message.contains("poll: busy"), "{e}");
}
