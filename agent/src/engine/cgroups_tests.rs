use super::*;

fn res(json: &str) -> LinuxResources {
    serde_json::from_str(json).unwrap()
}

#[test]
fn shares_convert_like_runc() {
    assert_eq!(shares_to_weight(2), 1);
    assert_eq!(shares_to_weight(1024), 39);
    assert_eq!(shares_to_weight(262_144), 10_000);
    assert_eq!(blkio_weight_to_io(10), 1);
    assert_eq!(blkio_weight_to_io(1000), 10_000);
    assert_eq!(blkio_weight_to_io(500), 4950);
}

#[test]
fn docker_flags_become_interface_files() {
    // docker run --memory 64m --memory-reservation 32m --memory-swap 128m --cpus 1.5
    //   --cpu-shares 512 --cpuset-cpus 0 --pids-limit 20 --device-read-bps /dev/sda:1mb
    //   --device-write-iops /dev/sda:100 --blkio-weight 500
    let r = res(r#"{
        "memory": {"limit": 67108864, "reservation": 33554432, "swap": 134217728},
        "cpu": {"shares": 512, "quota": 150000, "period": 100000, "cpus": "0"},
        "pids": {"limit": 20},
        "blockIO": {"weight": 500,
            "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}],
            "throttleWriteIOPSDevice": [{"major": 8, "minor": 0, "rate": 100}]}
    }"#);
    let files = resource_files(&r).unwrap();
    let want: Vec<(&str, String)> = vec![
        ("memory.max", "67108864".into()),
        ("memory.low", "33554432".into()),
        ("memory.swap.max", "67108864".into()),
        ("cpu.weight", "20".into()),
        ("cpu.max", "150000 100000".into()),
        ("cpuset.cpus", "0".into()),
        ("pids.max", "20".into()),
        ("io.weight", "default 4950".into()),
        ("io.max", "8:0 rbps=1048576".into()),
        ("io.max", "8:0 wiops=100".into()),
    ];
    assert_eq!(files, want);
}

#[test]
fn unlimited_values_are_max() {
    let r = res(
        r#"{"memory": {"limit": -1, "swap": -1}, "cpu": {"quota": -1}, "pids": {"limit": -1}}"#,
    );
    let files = resource_files(&r).unwrap();
    assert!(files.contains(&("memory.max", "max".into())));
    assert!(files.contains(&("memory.swap.max", "max".into())));
    assert!(files.contains(&("cpu.max", "max 100000".into())));
    assert!(files.contains(&("pids.max", "max".into())));
    let bad = res(r#"{"memory": {"limit": 100, "swap": 50}}"#);
    assert!(resource_files(&bad).is_err());
}

#[test]
fn manager_writes_and_reads_a_directory() {
    let dir = std::env::temp_dir().join(format!("husk-cg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cg = CgroupV2 { dir: dir.clone() };
    cg.apply(1234).unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.join("cgroup.procs")).unwrap(),
        "1234"
    );
    cg.set(&res(r#"{"pids": {"limit": 5}}"#)).unwrap();
    assert_eq!(std::fs::read_to_string(dir.join("pids.max")).unwrap(), "5");
    std::fs::write(
        dir.join("memory.events"),
        "low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n",
    )
    .unwrap();
    std::fs::write(dir.join("memory.max"), "max\n").unwrap();
    let s = cg.stats().unwrap();
    assert_eq!(s.oom_kills, 2);
    assert_eq!(s.memory_limit, u64::MAX);
    assert_eq!(cg.pids().unwrap(), vec![1234]);
    cg.freeze(true).unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.join("cgroup.freeze")).unwrap(),
        "1"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cgroup_dir_stays_below_the_root() {
    assert_eq!(dir_for(None, "c1"), PathBuf::from("/sys/fs/cgroup/husk/c1"));
    assert_eq!(
        dir_for(Some(Path::new("/../../etc/x")), "c1"),
        PathBuf::from("/sys/fs/cgroup/etc/x")
    );
}
