//! Remote nodes over SSH, against a real OpenSSH server: every test starts its own `sshd` (as root,
//! on a free port, with a generated host key and `authorized_keys`, its own `sshd_config`), and
//! drives the real `rbee-tui` binary, which uploads and starts the real `rbee-agent` and
//! `rbee-worker` on the "node" (a temp dir on this machine; one test puts the node in its own
//! network namespace behind a veth pair, so the session crosses a network interface).
//!
//! The `rbee-tui` runs get a private `HOME` (so `~/.ssh/known_hosts`, rbee's own known-hosts file
//! under `~/.config/rbee` and default keys are the test's own) and no ssh-agent unless a test
//! starts one. Every wait is bounded; guards stop sshd, the node's agent and workers, and remove
//! network namespaces and mounts even when a test fails.
mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::run::{run_bounded, Run};
use rbee_testkit::{alive, bin, children_of, model_path, wait_for};
use serde_json::Value;

const TUI: &str = env!("CARGO_BIN_EXE_rbee-tui");
const SSHD: &str = "/usr/sbin/sshd";
/// Longest any one `rbee-tui` run may take (a cold bring-up uploads ~30 MB and starts an agent;
/// the machine may be busy).
const RUN_LIMIT: Duration = Duration::from_secs(240);

fn sh(cmd: &str) -> Run {
    let mut c = Command::new("sh");
    c.arg("-c").arg(cmd);
    run_bounded(c, Duration::from_secs(60))
}

/// A new ed25519 key pair at `path` and `path.pub`.
fn keygen(path: &Path) {
    let mut c = Command::new("ssh-keygen");
    c.args(["-q", "-t", "ed25519", "-N", "", "-C", "rbee-test", "-f"])
        .arg(path);
    run_bounded(c, Duration::from_secs(30)).ok();
}

/// `SHA256:…` of a public key file, as ssh-keygen computes it.
fn fingerprint(pub_file: &Path) -> String {
    let mut c = Command::new("ssh-keygen");
    c.arg("-lf").arg(pub_file);
    let r = run_bounded(c, Duration::from_secs(30));
    r.ok().stdout.split_whitespace().nth(1).unwrap().to_string()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ---------------------------------------------------------------------------------------------
// sshd

/// A running `sshd -D -e` with its own config; killed on drop.
struct Sshd {
    child: Child,
    log: PathBuf,
}

impl Sshd {
    /// Serve `listen` (`IP:PORT`) with `host_key`, accepting the keys in `authorized_keys`; inside
    /// network namespace `netns` when given.
    fn start(
        dir: &Path,
        listen: SocketAddr,
        host_key: &Path,
        authorized_keys: &Path,
        netns: Option<&str>,
        extra: &str,
    ) -> Sshd {
        std::fs::create_dir_all("/run/sshd").unwrap();
        let name = format!("sshd-{}", listen.port());
        let config = dir.join(format!("{name}.config"));
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress {ip}\nHostKey {key}\nPidFile {dir}/{name}.pid\nAuthorizedKeysFile {ak}\n\
                 StrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nAllowTcpForwarding yes\n\
                 MaxStartups 100\nLogLevel VERBOSE\n{extra}\n",
                port = listen.port(),
                ip = listen.ip(),
                key = host_key.display(),
                dir = dir.display(),
                ak = authorized_keys.display(),
            ),
        )
        .unwrap();
        let log = dir.join(format!("{name}.log"));
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, SSHD]);
                c
            }
            None => Command::new(SSHD),
        };
        cmd.arg("-D").arg("-e").arg("-f").arg(&config);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let mut child = cmd
            .spawn()
            .expect("start sshd (apt-get install openssh-server)");
        wait_for(Duration::from_secs(20), "sshd to listen", || {
            if let Ok(Some(st)) = child.try_wait() {
                panic!(
                    "sshd exited with {st}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            TcpStream::connect_timeout(&listen, Duration::from_millis(200)).ok()
        });
        Sshd { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// The test's world: keys, a private HOME, a config file, the node's rbee dir.

struct World {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    home: PathBuf,
    config: PathBuf,
    key: PathBuf,
    authorized_keys: PathBuf,
    host_key: PathBuf,
    /// Extra environment for `rbee-tui` runs.
    env: Vec<(String, String)>,
}

impl World {
    fn new() -> World {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let home = dir.join("home");
        std::fs::create_dir_all(home.join(".ssh")).unwrap();
        let key = dir.join("id_ed25519");
        keygen(&key);
        let host_key = dir.join("host_ed25519");
        keygen(&host_key);
        let authorized_keys = dir.join("authorized_keys");
        std::fs::copy(key.with_extension("pub"), &authorized_keys).unwrap();
        World {
            config: dir.join("tui.toml"),
            _tmp: tmp,
            dir,
            home,
            key,
            authorized_keys,
            host_key,
            env: vec![],
        }
    }

    fn sshd(&self, listen: SocketAddr, netns: Option<&str>) -> Sshd {
        self.sshd_with(listen, netns, "")
    }

    /// With extra `sshd_config` lines.
    fn sshd_with(&self, listen: SocketAddr, netns: Option<&str>, extra: &str) -> Sshd {
        Sshd::start(
            &self.dir,
            listen,
            &self.host_key,
            &self.authorized_keys,
            netns,
            extra,
        )
    }

    fn tui(&self, args: &[&str]) -> Run {
        let mut cmd = Command::new(TUI);
        cmd.arg("--config")
            .arg(&self.config)
            .arg("--timeout")
            .arg("120")
            .args(args);
        for var in [
            "RUST_LOG",
            "RBEE_CONFIG",
            "RBEE_LOG_FILE",
            "RBEE_KNOWN_HOSTS",
            "XDG_CONFIG_HOME",
            "SSH_AUTH_SOCK",
            "RBEE_MODEL_DIR",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("HOME", &self.home)
            .env("RBEE_LOCAL_STATE", self.dir.join("local-state"))
            .env("RBEE_AGENT_BIN", bin("rbee-agent"))
            .env("RBEE_WORKER_BIN", bin("rbee-worker"));
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        run_bounded(cmd, RUN_LIMIT)
    }

    /// `nodes add NAME --ssh ADDR --remote-dir DIR --model-dir <test models>` plus `extra`.
    fn add(&self, name: &str, ssh: &str, remote: &Path, extra: &[&str]) -> Run {
        let model_dir = model_path().parent().unwrap().to_str().unwrap().to_string();
        let mut args = vec![
            "nodes",
            "add",
            name,
            "--ssh",
            ssh,
            "--remote-dir",
            remote.to_str().unwrap(),
            "--model-dir",
            &model_dir,
        ];
        args.extend_from_slice(extra);
        self.tui(&args)
    }

    fn nodes(&self) -> Vec<Value> {
        self.tui(&["nodes", "list", "--json"])
            .json()
            .as_array()
            .unwrap()
            .clone()
    }

    fn own_known_hosts(&self) -> PathBuf {
        self.home.join(".config/rbee/known_hosts")
    }
}

/// Kills whatever agent (and its workers) runs from a node's rbee dir, however the test ends.
struct NodeGuard(PathBuf);

impl Drop for NodeGuard {
    fn drop(&mut self) {
        for pid in agents_of(&self.0) {
            for w in children_of(pid) {
                // SAFETY: signalling a process this test started (through sshd).
                unsafe { libc::kill(w as i32, libc::SIGKILL) };
            }
            // SAFETY: as above.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

/// Live processes whose command line contains `needle`.
fn procs_with(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(needle) && alive(pid) {
            out.push(pid);
        }
    }
    out
}

/// Agents running from the node dir `remote`.
fn agents_of(remote: &Path) -> Vec<u32> {
    procs_with(&format!("{}/bin/rbee-agent ", remote.display()))
}

fn workers_of(remote: &Path) -> Vec<u32> {
    procs_with(&format!("{}/bin/rbee-worker ", remote.display()))
}

/// Spawn the test model on `node`, wait until ready, then generate 8 tokens; returns the worker pid.
fn spawn_and_infer(w: &World, node: &str) -> u32 {
    let model = model_path();
    let worker = w
        .tui(&[
            "workers",
            "spawn",
            "--node",
            node,
            "--model",
            model.to_str().unwrap(),
            "--wait",
            "--json",
        ])
        .json();
    assert_eq!(worker["state"], "ready", "{worker}");
    let pid = worker["pid"].as_u64().unwrap() as u32;
    let r = w
        .tui(&[
            "infer",
            "--node",
            node,
            "--model",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "--prompt",
            "The capital of France is",
            "--max-tokens",
            "8",
            "--temperature",
            "0",
            "--ignore-eos",
            "--json",
        ])
        .json();
    assert_eq!(r["usage"]["generated_tokens"], 8, "{r}");
    assert!(!r["text"].as_str().unwrap().trim().is_empty(), "{r}");
    assert!(
        r["client"]["decode_tokens_per_s"].as_f64().unwrap() > 0.0,
        "{r}"
    );
    pid
}

// ---------------------------------------------------------------------------------------------
// Tests.

/// Unknown host key refused with its fingerprint, accepted with the flag; first bring-up installs
/// and starts the agent, the second reuses it; spawn + infer through the tunnel; two bring-ups at
/// once leave one agent; `nodes stop` leaves no agent or worker.
#[test]
fn bring_up_reuse_spawn_infer_and_stop_on_a_loopback_node() {
    let w = World::new();
    let port = free_port();
    let sshd = w.sshd(SocketAddr::from(([127, 0, 0, 1], port)), None);
    let remote = w.dir.join("node");
    let _guard = NodeGuard(remote.clone());
    let addr = format!("root@127.0.0.1:{port}");
    let key = w.key.to_str().unwrap();

    // Unknown host key: refused with the fingerprint ssh-keygen computes; nothing recorded or started.
    let fp = fingerprint(&w.host_key.with_extension("pub"));
    w.add("n1", &addr, &remote, &["--identity", key])
        .fails_with(&["is not known", &fp, "--accept-new-host-key"]);
    assert!(w.nodes().is_empty());
    assert!(
        !remote.join("bin").exists(),
        "nothing installed before the host is trusted"
    );

    // Accepted: recorded in rbee's own known_hosts, agent installed and started.
    let t0 = Instant::now();
    let first = w
        .add(
            "n1",
            &addr,
            &remote,
            &["--identity", key, "--accept-new-host-key", "--json"],
        )
        .json();
    eprintln!("cold bring-up took {:?}", t0.elapsed());
    assert_eq!(first["host_key_learned"], fp.as_str(), "{first}");
    assert_eq!(first["agent"]["installed"], true, "{first}");
    assert_eq!(first["agent"]["started"], true, "{first}");
    let pid = first["agent"]["pid"].as_u64().unwrap() as u32;
    assert!(alive(pid));
    assert_eq!(
        agents_of(&remote),
        vec![pid],
        "one agent, from the installed binary"
    );
    assert!(remote.join("bin/rbee-worker").is_file());
    let addr_file = std::fs::read_to_string(remote.join("agent/agent.addr")).unwrap();
    assert!(
        addr_file.trim().starts_with("127.0.0.1:"),
        "agent listens on loopback only: {addr_file}"
    );
    let kh = std::fs::read_to_string(w.own_known_hosts()).unwrap();
    assert!(
        kh.contains(&format!("[127.0.0.1]:{port} ssh-ed25519 ")),
        "{kh}"
    );
    let nodes = w.nodes();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0]["ssh"], addr.as_str());
    // The node's audit log names the SSH login (user and key) of the session that added it.
    let audit = std::fs::read_to_string(remote.join("agent/audit.jsonl")).unwrap();
    let key_fp = fingerprint(&w.key.with_extension("pub"));
    assert!(
        audit.lines().any(|l| l.contains(r#""action":"auth_ok""#)
            && l.contains(&format!("ssh root key {key_fp}"))),
        "{audit}"
    );

    // Second bring-up (the host key is known now): the running agent is reused.
    let second = w
        .add("n1b", &addr, &remote, &["--identity", key, "--json"])
        .json();
    assert_eq!(second["agent"]["installed"], false, "{second}");
    assert_eq!(second["agent"]["started"], false, "{second}");
    assert_eq!(second["agent"]["pid"].as_u64(), Some(pid as u64));
    assert_eq!(agents_of(&remote), vec![pid]);

    // Spawn and infer through the tunnel on the real model.
    let worker = spawn_and_infer(&w, "n1");
    assert!(
        children_of(pid).contains(&worker),
        "the worker is the node agent's child"
    );

    // Stop: agent and worker gone, and reported.
    let stopped = w.tui(&["nodes", "stop", "n1", "--json"]).json();
    assert_eq!(stopped["agent_pid"].as_u64(), Some(pid as u64), "{stopped}");
    assert!(
        stopped["worker_pids"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_u64() == Some(worker as u64)),
        "{stopped}"
    );
    assert!(!alive(pid) && !alive(worker));
    assert!(agents_of(&remote).is_empty() && workers_of(&remote).is_empty());
    w.tui(&["nodes", "stop", "n1"]).ok();

    concurrent_bring_ups_leave_one_agent(&w, &remote);
    assert!(sshd.log().contains("Accepted publickey"), "{}", sshd.log());
}

/// `--version`'s build id of the binary at `path` (run here: the node's dir is on this machine).
fn build_of(path: &Path) -> String {
    let out = Command::new(path).arg("--version").output().unwrap();
    let line = String::from_utf8_lossy(&out.stdout).to_string();
    let id = line.split_whitespace().skip_while(|w| *w != "build").nth(1);
    id.unwrap_or_else(|| panic!("no build id in `{line}`"))
        .to_string()
}

/// "Old" binaries in `dir`: this build with a few bytes appended (they run the same, hash
/// otherwise); the environment that makes rbee-tui upload them.
fn older_build(dir: &Path) -> Vec<(String, String)> {
    std::fs::create_dir_all(dir).unwrap();
    let mut env = Vec::new();
    for (name, var) in [
        ("rbee-agent", "RBEE_AGENT_BIN"),
        ("rbee-worker", "RBEE_WORKER_BIN"),
    ] {
        let mut bytes = std::fs::read(bin(name)).unwrap();
        bytes.extend_from_slice(b"\0an older build");
        std::fs::write(dir.join(name), bytes).unwrap();
        let exec = std::os::unix::fs::PermissionsExt::from_mode(0o755);
        std::fs::set_permissions(dir.join(name), exec).unwrap();
        env.push((var.to_string(), dir.join(name).display().to_string()));
    }
    env
}

/// What keeps the agent up: a systemd user unit where a user manager answers, else detached;
/// said by `nodes add` and `nodes list`.
fn says_what_keeps_it_up(w: &World, added: &Value) {
    let kept = added["agent"]["supervisor"].as_str().unwrap_or_default();
    let user_systemd = Command::new("systemctl")
        .args(["--user", "show-environment"])
        .output()
        .is_ok_and(|o| o.status.success());
    let expected = if user_systemd {
        "systemd user unit rbee-agent-"
    } else {
        "detached (no systemd user manager"
    };
    assert!(kept.starts_with(expected), "{added}");
    let list = w.tui(&["nodes", "list"]).ok().stdout.clone();
    assert!(
        list.contains(&format!("agent kept up by {expected}")),
        "{list}"
    );
}

/// A model dir the running agent does not serve: it is restarted with it, nothing uploaded.
fn model_dir_restarts(w: &World, addr: &str, remote: &Path, key: &str) {
    let extra = w.dir.join("more-models");
    std::fs::create_dir_all(&extra).unwrap();
    let extra = extra.display().to_string();
    let more = w
        .add(
            "n5",
            addr,
            remote,
            &["--identity", key, "--model-dir", &extra, "--json"],
        )
        .json();
    let agent = &more["agent"];
    assert_eq!(agent["installed"], false, "{more}");
    let why = agent["replaced"].as_str().unwrap_or_default();
    assert!(
        why.starts_with("restarted with model dir(s)") && why.contains(&extra),
        "{more}"
    );
    let pid = agent["pid"].as_u64().unwrap() as u32;
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(cmdline.contains(&extra), "{cmdline:?}");
    w.tui(&["nodes", "stop", "n5"]).ok();
}

/// A node whose agent and worker are another build of the same protocol gets this machine's
/// (the old agent stopped, its worker back from the desired state), unless pinned with
/// `--no-upgrade`; a `--model-dir` the running agent lacks restarts it with the dir.
#[test]
fn a_node_with_another_build_is_upgraded_unless_pinned() {
    let mut w = World::new();
    let port = free_port();
    let _sshd = w.sshd(SocketAddr::from(([127, 0, 0, 1], port)), None);
    let remote = w.dir.join("node");
    let _guard = NodeGuard(remote.clone());
    let addr = format!("root@127.0.0.1:{port}");
    let key = w.key.to_str().unwrap().to_string();
    let old_env = older_build(&w.dir.join("old"));
    w.env = old_env.clone();
    let first = w
        .add(
            "n1",
            &addr,
            &remote,
            &["--identity", &key, "--accept-new-host-key", "--json"],
        )
        .json();
    let old_pid = first["agent"]["pid"].as_u64().unwrap() as u32;
    says_what_keeps_it_up(&w, &first);
    let node_agent = remote.join("bin/rbee-agent");
    assert_eq!(
        build_of(&node_agent),
        build_of(&w.dir.join("old/rbee-agent"))
    );
    let model = model_path().display().to_string();
    w.tui(&[
        "workers", "spawn", "--node", "n1", "--model", &model, "--wait",
    ])
    .ok();

    // This machine's build: replaced, the old agent gone, the worker restored by the new one.
    w.env.clear();
    let second = w
        .add("n2", &addr, &remote, &["--identity", &key, "--json"])
        .json();
    let agent = &second["agent"];
    assert_eq!(agent["installed"], true, "{second}");
    let why = agent["replaced"].as_str().unwrap_or_default();
    assert!(why.contains("replaced: it has build"), "{second}");
    let new_pid = agent["pid"].as_u64().unwrap() as u32;
    assert!(
        new_pid != old_pid && !alive(old_pid),
        "the old agent was stopped"
    );
    assert_eq!(build_of(&node_agent), build_of(&bin("rbee-agent")));
    wait_for(Duration::from_secs(60), "the desired worker back", || {
        let list = w.tui(&["workers", "list", "--node", "n2", "--json"]).json();
        (list[0]["state"] == "ready").then_some(())
    });
    // The node agent's own log, through the session.
    let log = w
        .tui(&["nodes", "logs", "n2", "--lines", "200"])
        .ok()
        .stdout
        .clone();
    assert!(log.contains("rbee-agent listening"), "{log}");
    // The same build again: reused.
    let again = w
        .add("n3", &addr, &remote, &["--identity", &key, "--json"])
        .json();
    assert_eq!(
        (&again["agent"]["installed"], &again["agent"]["started"]),
        (&Value::Bool(false), &Value::Bool(false)),
        "{again}"
    );

    // Pinned: another build here, but the node keeps what it runs.
    w.env = old_env;
    let pinned = w
        .add(
            "n4",
            &addr,
            &remote,
            &["--identity", &key, "--no-upgrade", "--json"],
        )
        .json();
    assert_eq!(
        pinned["agent"]["pid"].as_u64(),
        Some(new_pid as u64),
        "{pinned}"
    );
    assert_eq!(pinned["agent"]["replaced"], Value::Null, "{pinned}");
    assert_eq!(build_of(&node_agent), build_of(&bin("rbee-agent")));

    w.env.clear();
    model_dir_restarts(&w, &addr, &remote, &key);
}

/// Two bring-ups at once (two names for the same node): exactly one agent comes up, and it
/// restores the worker the operator asked for; `nodes stop` then leaves nothing.
fn concurrent_bring_ups_leave_one_agent(w: &World, remote: &Path) {
    let spawn_list = |node: &str| {
        let mut cmd = Command::new(TUI);
        cmd.arg("--config")
            .arg(&w.config)
            .args(["workers", "list", "--json", "--node", node]);
        cmd.env("HOME", &w.home)
            .env_remove("SSH_AUTH_SOCK")
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("RBEE_KNOWN_HOSTS");
        cmd.env("RBEE_AGENT_BIN", bin("rbee-agent"));
        cmd
    };
    let a = std::thread::spawn({
        let c = spawn_list("n1");
        move || run_bounded(c, RUN_LIMIT)
    });
    let b = run_bounded(spawn_list("n1b"), RUN_LIMIT);
    let a = a.join().unwrap();
    a.json();
    b.json();
    let agents = agents_of(remote);
    assert_eq!(agents.len(), 1, "two concurrent bring-ups left {agents:?}");
    wait_for(
        Duration::from_secs(60),
        "the desired worker to come back",
        || (!workers_of(remote).is_empty()).then_some(()),
    );
    let stopped = w.tui(&["nodes", "stop", "n1b", "--json"]).json();
    assert_eq!(stopped["agent_pid"].as_u64(), Some(agents[0] as u64));
    assert!(
        agents_of(remote).is_empty() && workers_of(remote).is_empty(),
        "nothing left after stop"
    );
}

/// A host whose key differs from the one in `~/.ssh/known_hosts` is refused loudly, even with
/// `--accept-new-host-key`; with the recorded key the user's known_hosts is enough. An agent that
/// cannot start is reported with the last lines of its log.
#[test]
fn changed_host_key_is_refused_and_a_failing_agent_is_reported() {
    let w = World::new();
    let port = free_port();
    let remote = w.dir.join("node");
    let _guard = NodeGuard(remote.clone());
    let addr = format!("root@127.0.0.1:{port}");
    let key = w.key.to_str().unwrap().to_string();
    let key = key.as_str();
    // The user's known_hosts knows another key for this host.
    let old_key = w.dir.join("old_host_ed25519");
    keygen(&old_key);
    let old_pub = std::fs::read_to_string(old_key.with_extension("pub")).unwrap();
    let user_kh = w.home.join(".ssh/known_hosts");
    std::fs::write(
        &user_kh,
        format!("# first line is a comment\n[127.0.0.1]:{port} {old_pub}"),
    )
    .unwrap();
    {
        let _sshd = w.sshd(SocketAddr::from(([127, 0, 0, 1], port)), None);
        let fp = fingerprint(&w.host_key.with_extension("pub"));
        for extra in [
            &["--identity", key][..],
            &["--identity", key, "--accept-new-host-key"][..],
        ] {
            w.add("n", &addr, &remote, extra).fails_with(&[
                "HOST KEY OF",
                "HAS CHANGED",
                &fp,
                "line 2 of",
                ".ssh/known_hosts",
            ]);
        }
        assert!(w.nodes().is_empty());
        assert!(
            !w.own_known_hosts().exists(),
            "a changed key is never recorded"
        );
        assert!(
            !remote.exists(),
            "nothing done on a host that failed the key check"
        );
    }
    // The same host presenting the recorded key: trusted through ~/.ssh/known_hosts alone. The
    // node's agent config is broken, so the agent exits at once and its log says why.
    std::fs::write(&user_kh, format!("[127.0.0.1]:{port} {old_pub}")).unwrap();
    let mut w2 = w;
    w2.host_key = old_key;
    let _sshd = w2.sshd(SocketAddr::from(([127, 0, 0, 1], port)), None);
    std::fs::create_dir_all(&remote).unwrap();
    std::fs::write(remote.join("agent.toml"), "heartbeat_msec = 3\n").unwrap();
    w2.add("n", &addr, &remote, &["--identity", key])
        .fails_with(&["rbee-agent failed to start", "agent.log", "heartbeat_msec"]);
    assert!(agents_of(&remote).is_empty());
    assert!(
        remote.join("bin/rbee-agent").is_file(),
        "installed before the start failed"
    );
    assert!(
        w2.nodes().is_empty(),
        "a node whose bring-up failed is not recorded"
    );
}

/// Wrong key, unreachable host, unreadable identity, a full disk and a node of another
/// architecture each end in one clear line.
#[test]
fn wrong_key_unreachable_full_disk_and_other_arch_are_one_line_errors() {
    let w = World::new();
    let port = free_port();
    let _sshd = w.sshd(SocketAddr::from(([127, 0, 0, 1], port)), None);
    let addr = format!("root@127.0.0.1:{port}");
    let remote = w.dir.join("node");
    let _guard = NodeGuard(remote.clone());

    let stranger = w.dir.join("stranger");
    keygen(&stranger);
    w.add(
        "n",
        &addr,
        &remote,
        &[
            "--identity",
            stranger.to_str().unwrap(),
            "--accept-new-host-key",
        ],
    )
    .fails_with(&["authentication as `root` refused", "stranger"]);

    let closed = free_port();
    w.add(
        "n",
        &format!("root@127.0.0.1:{closed}"),
        &remote,
        &["--identity", w.key.to_str().unwrap()],
    )
    .fails_with(&["cannot reach 127.0.0.1:", "refused"]);

    w.add(
        "n",
        &addr,
        &remote,
        &["--identity", w.dir.join("missing-key").to_str().unwrap()],
    )
    .fails_with(&["cannot use identity", "missing-key"]);

    // A node dir on a 1 MiB filesystem.
    std::fs::create_dir_all(&remote).unwrap();
    let _mount = Mount::tmpfs(&remote, "1m");
    w.add(
        "n",
        &addr,
        &remote,
        &["--identity", w.key.to_str().unwrap()],
    )
    .fails_with(&["no space to install rbee-agent", "MiB free"]);
    assert!(w.nodes().is_empty());
    assert!(agents_of(&remote).is_empty());

    // A node whose `uname -m` says riscv64 (a `uname` first on the sessions' PATH).
    let fake = w.dir.join("fakebin");
    std::fs::create_dir_all(&fake).unwrap();
    std::fs::write(
        fake.join("uname"),
        "#!/bin/sh\ncase \"$1\" in -m) echo riscv64 ;; *) exec /bin/uname \"$@\" ;; esac\n",
    )
    .unwrap();
    sh(&format!("chmod +x {}/uname", fake.display())).ok();
    let port2 = free_port();
    let _riscv = w.sshd_with(
        SocketAddr::from(([127, 0, 0, 1], port2)),
        None,
        &format!("SetEnv PATH={}:/usr/bin:/bin", fake.display()),
    );
    let remote2 = w.dir.join("node2");
    w.add(
        "n",
        &format!("root@127.0.0.1:{port2}"),
        &remote2,
        &[
            "--identity",
            w.key.to_str().unwrap(),
            "--accept-new-host-key",
        ],
    )
    .fails_with(&[
        "remote architecture mismatch",
        "riscv64",
        std::env::consts::ARCH,
    ]);
    assert!(
        !remote2.join("bin").exists(),
        "nothing uploaded to a node of another architecture"
    );
}

/// Keys from a running ssh-agent authenticate when no identity is given.
#[test]
fn ssh_agent_keys_authenticate() {
    let mut w = World::new();
    let port = free_port();
    let _sshd = w.sshd(SocketAddr::from(([127, 0, 0, 1], port)), None);
    let remote = w.dir.join("node");
    let _guard = NodeGuard(remote.clone());
    let sock = w.dir.join("agent.sock");
    let mut agent = Command::new("ssh-agent");
    agent
        .arg("-D")
        .arg("-a")
        .arg(&sock)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let agent = KillOnDrop(agent.spawn().expect("ssh-agent"));
    wait_for(Duration::from_secs(10), "ssh-agent socket", || {
        sock.exists().then_some(())
    });
    let mut add = Command::new("ssh-add");
    add.arg(&w.key).env("SSH_AUTH_SOCK", &sock);
    run_bounded(add, Duration::from_secs(30)).ok();
    // The key file is gone from where rbee-tui could find it: only the ssh-agent has it.
    std::fs::remove_file(&w.key).unwrap();
    w.env
        .push(("SSH_AUTH_SOCK".into(), sock.to_str().unwrap().into()));
    let up = w
        .add(
            "n",
            &format!("root@127.0.0.1:{port}"),
            &remote,
            &["--accept-new-host-key", "--json"],
        )
        .json();
    assert_eq!(up["agent"]["started"], true, "{up}");
    let stopped = w.tui(&["nodes", "stop", "n", "--json"]).json();
    assert_eq!(stopped["agent_pid"], up["agent"]["pid"]);
    assert!(agents_of(&remote).is_empty());
    drop(agent);
}

/// The node in its own network namespace behind a veth pair: the session crosses a real
/// interface, the agent listens on the namespace's loopback only (unreachable from here), and
/// spawn + infer + stop work through the SSH tunnel.
#[test]
fn node_in_a_network_namespace_across_a_veth_pair() {
    let w = World::new();
    let ns = Netns::new();
    let node_ip = ns.node_ip;
    let _sshd = w.sshd(SocketAddr::from((node_ip, 22)), Some(&ns.name));
    let remote = w.dir.join("node");
    let _guard = NodeGuard(remote.clone());
    let addr = format!("root@{}", std::net::Ipv4Addr::from(node_ip));

    let up = w
        .add(
            "far",
            &addr,
            &remote,
            &[
                "--identity",
                w.key.to_str().unwrap(),
                "--accept-new-host-key",
                "--json",
            ],
        )
        .json();
    assert_eq!(up["agent"]["installed"], true, "{up}");
    let agent_addr: SocketAddr = up["agent"]["addr"].as_str().unwrap().parse().unwrap();
    assert!(agent_addr.ip().is_loopback(), "{up}");
    // From this namespace the agent's port is not there: not on our loopback, not on the veth.
    assert!(
        TcpStream::connect_timeout(&agent_addr, Duration::from_millis(500)).is_err(),
        "agent port visible outside its namespace"
    );
    let on_veth = SocketAddr::from((node_ip, agent_addr.port()));
    assert!(
        TcpStream::connect_timeout(&on_veth, Duration::from_millis(500)).is_err(),
        "agent port exposed on the network"
    );
    let kh = std::fs::read_to_string(w.own_known_hosts()).unwrap();
    assert!(
        kh.starts_with(&format!(
            "{} ssh-ed25519 ",
            std::net::Ipv4Addr::from(node_ip)
        )),
        "port 22 is written bare: {kh}"
    );

    let worker = spawn_and_infer(&w, "far");
    let status = w.tui(&["status", "--json"]).json();
    assert_eq!(status["nodes"][0]["state"], "connected", "{status}");
    assert!(
        status["nodes"][0]["url"]
            .as_str()
            .unwrap()
            .starts_with("ssh://"),
        "{status}"
    );

    let stopped = w.tui(&["nodes", "stop", "far", "--json"]).json();
    assert!(
        stopped["worker_pids"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_u64() == Some(worker as u64)),
        "{stopped}"
    );
    assert!(agents_of(&remote).is_empty() && workers_of(&remote).is_empty());
    assert!(ns.pids().iter().all(|p| !workers_of(&remote).contains(p)));
}

/// The next `Connected` (its url) or `Disconnected` (its reason) from a session task.
async fn next(
    arx: &mut tokio::sync::mpsc::Receiver<rbee_tui::dashboard::action::Action>,
    want: &str,
) -> String {
    use rbee_tui::dashboard::action::Action;
    tokio::time::timeout(Duration::from_secs(90), async {
        loop {
            match arx.recv().await.expect("session task ended") {
                Action::Connected { url, .. } if want == "connected" => return url,
                Action::Disconnected { reason, .. } if want == "disconnected" => return reason,
                Action::Disconnected { reason, .. } => eprintln!("disconnected: {reason}"),
                _ => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no `{want}` within 90 s"))
}

/// The dashboard's session task for an SSH node (`session::run_node`, in process) reconnects after
/// the SSH connection is cut, to the same agent.
#[test]
fn dashboard_session_reconnects_after_the_ssh_connection_drops() {
    let w = World::new();
    let port = free_port();
    let sshd = w.sshd(SocketAddr::from(([127, 0, 0, 1], port)), None);
    let remote = w.dir.join("node");
    let _guard = NodeGuard(remote.clone());
    let up = w
        .add(
            "n",
            &format!("root@127.0.0.1:{port}"),
            &remote,
            &[
                "--identity",
                w.key.to_str().unwrap(),
                "--accept-new-host-key",
                "--json",
            ],
        )
        .json();
    let pid = up["agent"]["pid"].as_u64().unwrap() as u32;

    // This process reads the same known-hosts file the CLI wrote, and has no ssh-agent.
    std::env::set_var("RBEE_KNOWN_HOSTS", w.own_known_hosts());
    std::env::remove_var("SSH_AUTH_SOCK");
    let target = rbee_tui::nodes::config::ConfigFile::load(&w.config)
        .unwrap()
        .select_one(Some("n"))
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (atx, mut arx) = tokio::sync::mpsc::channel(1024);
        let (etx, erx) = tokio::sync::mpsc::channel(16);
        let task = tokio::spawn(rbee_tui::dashboard::node_session::run_node(
            0, target, atx, erx,
        ));
        let url = next(&mut arx, "connected").await;
        assert!(
            url.starts_with(&format!("ssh://root@127.0.0.1:{port} → 127.0.0.1:")),
            "{url}"
        );
        // Cut every SSH connection: sshd's per-connection processes die, the listener stays.
        let conns = children_of(sshd.child.id());
        assert!(!conns.is_empty(), "no sshd connection process");
        for c in conns {
            // SAFETY: sshd's per-connection process, started by this test's sshd.
            unsafe { libc::kill(c as i32, libc::SIGKILL) };
        }
        let reason = next(&mut arx, "disconnected").await;
        eprintln!("dropped: {reason}");
        next(&mut arx, "connected").await;
        drop(etx);
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("session task ends with the dashboard")
            .unwrap();
    });
    assert_eq!(
        agents_of(&remote),
        vec![pid],
        "the same agent served both sessions"
    );
    w.tui(&["nodes", "stop", "n"]).ok();
}

/// Quitting the dashboard stops the agent of a node added with `--ephemeral` (and only then).
#[test]
fn quitting_the_dashboard_stops_ephemeral_nodes() {
    let w = World::new();
    let port = free_port();
    let _sshd = w.sshd(SocketAddr::from(([127, 0, 0, 1], port)), None);
    let remote = w.dir.join("node");
    let _guard = NodeGuard(remote.clone());
    let up = w
        .add(
            "eph",
            &format!("root@127.0.0.1:{port}"),
            &remote,
            &[
                "--identity",
                w.key.to_str().unwrap(),
                "--accept-new-host-key",
                "--ephemeral",
                "--json",
            ],
        )
        .json();
    let pid = up["agent"]["pid"].as_u64().unwrap() as u32;
    assert!(w.tui(&["nodes", "list"]).ok().stdout.contains("ephemeral"));
    // A second, ordinary node (its own rbee dir on the same host) whose agent must survive.
    let remote2 = w.dir.join("node2");
    let _guard2 = NodeGuard(remote2.clone());
    let keep = w
        .add(
            "keep",
            &format!("root@127.0.0.1:{port}"),
            &remote2,
            &["--identity", w.key.to_str().unwrap(), "--json"],
        )
        .json();
    let keep_pid = keep["agent"]["pid"].as_u64().unwrap() as u32;

    // The dashboard in a real terminal: a tmux server on a private socket.
    let log = w.dir.join("tui.log");
    let sock = w.dir.join("tmux.sock");
    let dash = format!(
        "env HOME={home} RBEE_LOG_FILE={log} RBEE_AGENT_BIN={agent} {tui} --config {cfg}",
        home = w.home.display(),
        log = log.display(),
        agent = bin("rbee-agent").display(),
        tui = TUI,
        cfg = w.config.display(),
    );
    let mut tmux = Command::new("tmux");
    tmux.arg("-S")
        .arg(&sock)
        .args(["new-session", "-d", "-x", "120", "-y", "40", &dash]);
    tmux.env_remove("TMUX").env_remove("SSH_AUTH_SOCK");
    run_bounded(tmux, Duration::from_secs(30)).ok();
    struct TmuxGuard(PathBuf);
    impl Drop for TmuxGuard {
        fn drop(&mut self) {
            let _ = Command::new("tmux")
                .arg("-S")
                .arg(&self.0)
                .arg("kill-server")
                .stderr(Stdio::null())
                .status();
        }
    }
    let _tmux = TmuxGuard(sock);
    wait_for(
        Duration::from_secs(60),
        "the dashboard to connect to both nodes",
        || {
            let l = std::fs::read_to_string(&log).ok()?;
            let connected = l
                .lines()
                .filter(|l| l.contains(" connected"))
                .collect::<Vec<_>>();
            (connected.iter().any(|l| l.contains("eph"))
                && connected.iter().any(|l| l.contains("keep")))
            .then_some(())
        },
    );
    // The rbee-tui process itself (not the shell tmux started it with).
    let dashboard = wait_for(Duration::from_secs(10), "the dashboard process", || {
        procs_with(&format!("{TUI} --config {}", w.config.display()))
            .into_iter()
            .find(|p| {
                std::fs::read_link(format!("/proc/{p}/exe")).is_ok_and(|e| e == Path::new(TUI))
            })
    });
    assert!(alive(pid), "the agent runs while the dashboard does");
    // A polite kill ends the dashboard like `q`.
    // SAFETY: the dashboard this test started.
    unsafe { libc::kill(dashboard as i32, libc::SIGTERM) };
    wait_for(Duration::from_secs(60), "the dashboard to exit", || {
        (!alive(dashboard)).then_some(())
    });
    assert!(
        !alive(pid),
        "the ephemeral node's agent was stopped on exit; log: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(agents_of(&remote).is_empty());
    assert!(
        alive(keep_pid),
        "an ordinary node's agent is a daemon and keeps running"
    );
    w.tui(&["nodes", "stop", "keep"]).ok();
    assert!(!alive(keep_pid));
}

/// `:add NAME USER@HOST … --accept-new-host-key` typed into the dashboard brings the node up,
/// records it in the config file and follows it like any other node.
#[test]
fn dashboard_add_command_brings_up_and_follows_an_ssh_node() {
    let w = World::new();
    let port = free_port();
    let _sshd = w.sshd(SocketAddr::from(([127, 0, 0, 1], port)), None);
    let remote = w.dir.join("node");
    let _guard = NodeGuard(remote.clone());
    // One node that is never reachable, so no local agent is started.
    std::fs::write(
        &w.config,
        "[[nodes]]\nname = 'nowhere'\nurl = 'ws://127.0.0.1:1'\ntoken_file = '/nonexistent'\n",
    )
    .unwrap();
    let log = w.dir.join("tui.log");
    let sock = w.dir.join("tmux.sock");
    let dash = format!(
        "env HOME={home} RBEE_LOG_FILE={log} RBEE_AGENT_BIN={agent} RBEE_WORKER_BIN={worker} {TUI} --config {cfg}",
        home = w.home.display(),
        log = log.display(),
        agent = bin("rbee-agent").display(),
        worker = bin("rbee-worker").display(),
        cfg = w.config.display(),
    );
    let tmux = |args: &[&str]| {
        let mut c = Command::new("tmux");
        c.arg("-S")
            .arg(&sock)
            .args(args)
            .env_remove("TMUX")
            .env_remove("SSH_AUTH_SOCK");
        run_bounded(c, Duration::from_secs(30))
    };
    tmux(&["new-session", "-d", "-x", "160", "-y", "40", &dash]).ok();
    struct TmuxGuard(PathBuf);
    impl Drop for TmuxGuard {
        fn drop(&mut self) {
            let _ = Command::new("tmux")
                .arg("-S")
                .arg(&self.0)
                .arg("kill-server")
                .stderr(Stdio::null())
                .status();
        }
    }
    let _tmux = TmuxGuard(sock.clone());
    wait_for(Duration::from_secs(30), "the dashboard to start", || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|l| l.contains("dashboard starting"))
            .map(|_| ())
    });
    let command = format!(
        ":add far root@127.0.0.1:{port} --identity {} --remote-dir {} --model-dir {}",
        w.key.display(),
        remote.display(),
        model_path().parent().unwrap().display()
    );
    tmux(&["send-keys", "-l", &command]).ok();
    tmux(&["send-keys", "Enter"]).ok();
    // The host key is new: the dashboard asks, showing the fingerprint, and `y` trusts it.
    let screen = wait_for(Duration::from_secs(60), "the host-key question", || {
        let s = tmux(&["capture-pane", "-p"]).stdout;
        s.contains("Trust host key?").then_some(s)
    });
    assert!(
        screen.contains("SHA256:") && screen.contains("add node far"),
        "{screen}"
    );
    assert!(
        w.nodes().len() == 1,
        "nothing is recorded before the key is trusted"
    );
    tmux(&["send-keys", "y"]).ok();
    wait_for(
        Duration::from_secs(120),
        "the dashboard's session to the added node",
        || {
            let l = std::fs::read_to_string(&log).ok()?;
            l.lines()
                .any(|l| l.contains(" connected") && l.contains("far"))
                .then_some(())
        },
    );
    let nodes = w.nodes();
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    assert_eq!(nodes[1]["name"], "far");
    let trusted = std::fs::read_to_string(w.own_known_hosts()).unwrap_or_default();
    assert!(
        trusted.contains(&format!("[127.0.0.1]:{port}")),
        "the trusted key is remembered: {trusted:?}"
    );
    assert_eq!(nodes[1]["ssh"], format!("root@127.0.0.1:{port}").as_str());
    assert_eq!(agents_of(&remote).len(), 1);
    let screen = wait_for(Duration::from_secs(10), "the node on screen", || {
        let s = tmux(&["capture-pane", "-p"]).stdout;
        s.contains("far").then_some(s)
    });
    assert!(screen.contains("far"), "{screen}");
    tmux(&["send-keys", ":q", "Enter"]).ok();
    let stopped = w.tui(&["nodes", "stop", "far", "--json"]).json();
    assert!(stopped["agent_pid"].as_u64().is_some(), "{stopped}");
    assert!(agents_of(&remote).is_empty());
}

// ---------------------------------------------------------------------------------------------
// Guards for system state.

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A tmpfs mounted over a directory, unmounted on drop.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, size: &str) -> Mount {
        sh(&format!(
            "mount -t tmpfs -o size={size} rbee-test {}",
            at.display()
        ))
        .ok();
        Mount(at.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = sh(&format!("umount -l {}", self.0.display()));
    }
}

/// A network namespace joined to ours by a veth pair (10.213.X.1 here, 10.213.X.2 there).
struct Netns {
    name: String,
    host_if: String,
    node_ip: [u8; 4],
}

impl Netns {
    fn new() -> Netns {
        let id = std::process::id();
        let x = (id % 250) as u8 + 1;
        let name = format!("rbee-ssh-{id}");
        let (host_if, node_if) = (format!("rbh{id}"), format!("rbn{id}"));
        let ns = Netns {
            name: name.clone(),
            host_if: host_if.clone(),
            node_ip: [10, 213, x, 2],
        };
        sh(&format!(
            "set -e; ip netns add {name}; ip link add {host_if} type veth peer name {node_if}; \
             ip link set {node_if} netns {name}; ip addr add 10.213.{x}.1/30 dev {host_if}; ip link set {host_if} up; \
             ip netns exec {name} ip addr add 10.213.{x}.2/30 dev {node_if}; \
             ip netns exec {name} ip link set {node_if} up; ip netns exec {name} ip link set lo up"
        ))
        .ok();
        ns
    }

    fn pids(&self) -> Vec<u32> {
        sh(&format!("ip netns pids {}", self.name))
            .stdout
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for pid in self.pids() {
            // SAFETY: processes inside this test's own namespace.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let _ = sh(&format!(
            "ip netns del {}; ip link del {} 2>/dev/null; true",
            self.name, self.host_if
        ));
    }
}

/// The worker backends `status` reports for `node`.
fn backends_of(w: &World, node: &str) -> Value {
    let st = w.tui(&["status", "--json"]).json();
    let n = st["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == node)
        .unwrap_or_else(|| panic!("{node} not in {st}"))
        .clone();
    n["telemetry"]["backends"].clone()
}

/// An executable `sh` script.
fn write_script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    sh(&format!("chmod +x {}", path.display())).ok();
}

/// A node whose `nvidia-smi` (a script first on the sessions' PATH) reports two H100s. With no
/// CUDA worker on this machine, `nodes add` says so and how to build one, and the node serves on
/// CPU. With one (a stand-in `rbee-worker-cuda-sm90` and `cuda-lib/` beside this machine's
/// worker) the bring-up installs it and the runtime libraries, and the agent reports `cuda`.
#[test]
fn a_gpu_node_gets_the_cuda_worker_only_when_this_machine_has_one() {
    let w = World::new();
    let fake = w.dir.join("fakebin");
    std::fs::create_dir_all(&fake).unwrap();
    write_script(
        &fake.join("nvidia-smi"),
        "echo 'NVIDIA H100 80GB HBM3, 81559, 9.0'\necho 'NVIDIA H100 80GB HBM3, 81559, 9.0'",
    );
    let port = free_port();
    let _sshd = w.sshd_with(
        SocketAddr::from(([127, 0, 0, 1], port)),
        None,
        &format!("SetEnv PATH={}:/usr/bin:/bin", fake.display()),
    );
    let addr = format!("root@127.0.0.1:{port}");
    let key = w.key.to_str().unwrap().to_string();
    let remote = w.dir.join("node");
    let _guard = NodeGuard(remote.clone());
    let add = w.add(
        "g",
        &addr,
        &remote,
        &["--identity", &key, "--accept-new-host-key"],
    );
    add.ok();
    let said = add.stdout.clone();
    for needle in [
        "g: 2 NVIDIA GPU(s): NVIDIA H100 80GB HBM3 (79 GiB, sm_90)",
        "this machine has no CUDA worker to install",
        "rbee-worker-cuda-sm90",
        "the node serves on CPU",
        "scripts/build-cuda.sh 90",
    ] {
        assert!(said.contains(needle), "`{needle}` not in: {said}");
    }
    assert!(!remote.join("bin/rbee-worker-cuda").exists());
    spawn_and_infer(&w, "g");
    assert_eq!(backends_of(&w, "g"), serde_json::json!(["cpu"]));
    w.tui(&["nodes", "stop", "g"]).ok();
    w.tui(&["nodes", "rm", "g"]).ok();

    // This machine has a CUDA worker for sm_90 and its runtime libraries.
    let mine = w.dir.join("mine");
    std::fs::create_dir_all(mine.join("cuda-lib")).unwrap();
    std::os::unix::fs::symlink(bin("rbee-worker"), mine.join("rbee-worker")).unwrap();
    write_script(
        &mine.join("rbee-worker-cuda-sm90"),
        "[ \"$1\" = --version ] && { echo 'rbee-worker 0.1.0 (backends: cpu, cuda)'; exit 0; }\nexec sleep 600",
    );
    for lib in [
        "libcudart.so.13",
        "libcublas.so.13",
        "libcublasLt.so.13",
        "libcurand.so.10",
    ] {
        std::fs::write(mine.join("cuda-lib").join(lib), lib).unwrap();
    }
    let w2 = World {
        env: vec![(
            "RBEE_WORKER_BIN".into(),
            mine.join("rbee-worker").display().to_string(),
        )],
        ..World::new()
    };
    let remote2 = w.dir.join("node2");
    let _guard2 = NodeGuard(remote2.clone());
    let add = w2.add(
        "g2",
        &addr,
        &remote2,
        &["--identity", &key, "--accept-new-host-key"],
    );
    add.ok();
    assert!(
        add.stdout.contains("installed the CUDA worker")
            && add.stdout.contains("and the CUDA runtime libraries"),
        "{}",
        add.stdout
    );
    assert!(remote2.join("bin/rbee-worker-cuda").is_file());
    assert_eq!(
        std::fs::read_to_string(remote2.join("bin/cuda-lib/libcublasLt.so.13")).unwrap(),
        "libcublasLt.so.13"
    );
    assert_eq!(backends_of(&w2, "g2"), serde_json::json!(["cpu", "cuda"]));
    w2.tui(&["nodes", "stop", "g2"]).ok();
}
