//! Apache Kafka clusters owned by one test, for tests that kill, freeze or restart brokers: one
//! or three KRaft nodes (each broker and controller), each a `java` process on its own ports and
//! data directory. The jars are the ones `scripts/local-services.sh` installs (or
//! `ACTIVITY_TEST_KAFKA_HOME`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::kafka::{KafkaArgs, TopicSpec};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::services::free_port;

/// How long a node may take to start (three JVMs starting at once on two cores are slow).
const START_DEADLINE: Duration = Duration::from_secs(120);

/// One KRaft node of a test cluster.
struct Node {
    id: i32,
    port: u16,
    config: PathBuf,
    log: PathBuf,
    /// Where the current life's lines begin in `log`, so a restart does not see an earlier
    /// start.
    log_start: usize,
    child: Option<Child>,
}

/// A Kafka cluster of its own, removed (processes and data) when dropped.
pub struct KafkaCluster {
    home: PathBuf,
    dir: PathBuf,
    nodes: Vec<Node>,
}

impl KafkaCluster {
    /// Formats and starts `size` nodes and waits until every one serves. With three nodes,
    /// internal topics and the topics [`Self::create_topic`] makes have replication 3 and
    /// `min.insync.replicas=2`, as a production cluster would.
    pub fn start(size: usize) -> Self {
        let home = kafka_home();
        let dir = std::env::temp_dir().join(crate::unique("kafka-cluster"));
        std::fs::create_dir_all(&dir).expect("cluster directory");
        let ids: Vec<i32> = (1..=i32::try_from(size).expect("cluster size")).collect();
        let controller_ports: Vec<u16> = ids.iter().map(|_| free_port()).collect();
        let voters = ids
            .iter()
            .zip(&controller_ports)
            .map(|(id, port)| format!("{id}@127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",");
        let replication = size.min(3);
        let min_insync = size.min(2);
        let cluster_id = run_tool(&home, &["random-uuid"]);
        let mut nodes = Vec::new();
        for (id, controller_port) in ids.into_iter().zip(controller_ports) {
            let port = free_port();
            let node_dir = dir.join(format!("node-{id}"));
            std::fs::create_dir_all(&node_dir).expect("node directory");
            let config = node_dir.join("server.properties");
            std::fs::write(
                &config,
                format!(
                    "process.roles=broker,controller\n\
                     node.id={id}\n\
                     controller.quorum.voters={voters}\n\
                     listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}\n\
                     advertised.listeners=PLAINTEXT://127.0.0.1:{port}\n\
                     controller.listener.names=CONTROLLER\n\
                     inter.broker.listener.name=PLAINTEXT\n\
                     listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n\
                     log.dirs={data}\n\
                     auto.create.topics.enable=false\n\
                     group.initial.rebalance.delay.ms=0\n\
                     default.replication.factor={replication}\n\
                     min.insync.replicas={min_insync}\n\
                     offsets.topic.replication.factor={replication}\n\
                     offsets.topic.num.partitions=10\n\
                     transaction.state.log.replication.factor={replication}\n\
                     transaction.state.log.min.isr={min_insync}\n\
                     share.coordinator.state.topic.replication.factor={replication}\n\
                     share.coordinator.state.topic.min.isr={min_insync}\n\
                     broker.heartbeat.interval.ms=1000\n\
                     broker.session.timeout.ms=6000\n",
                    data = node_dir.join("data").display(),
                ),
            )
            .expect("node configuration");
            run_tool(
                &home,
                &[
                    "format",
                    "--cluster-id",
                    &cluster_id,
                    "--config",
                    &config.to_string_lossy(),
                ],
            );
            nodes.push(Node {
                id,
                port,
                config,
                log: node_dir.join("kafka.log"),
                log_start: 0,
                child: None,
            });
        }
        let mut cluster = Self { home, dir, nodes };
        cluster.start_all();
        cluster
    }

    /// Starts every node that is not running, with its data, and waits until all serve. They
    /// start together: a node cannot finish starting until a majority of controllers runs.
    pub fn start_all(&mut self) {
        for index in 0..self.nodes.len() {
            if self.nodes[index].child.is_none() {
                self.spawn(index);
            }
        }
        for index in 0..self.nodes.len() {
            self.wait_started(index);
        }
    }

    /// Stops every node as an operator stopping the cluster would (SIGTERM to all, then waiting
    /// for each to exit).
    pub fn stop_all(&mut self) {
        for node in &self.nodes {
            if let Some(child) = &node.child {
                crate::process::signal(child.id(), "-TERM");
            }
        }
        for index in 0..self.nodes.len() {
            self.stop(index);
        }
    }

    /// Bootstrap servers: every node.
    pub fn brokers(&self) -> String {
        self.nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// How many nodes the cluster has.
    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    /// SIGKILLs node `index`: no controlled shutdown, no leadership handed over.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops node `index` as an operator would (SIGTERM: a controlled shutdown), waiting for it
    /// to exit.
    pub fn stop(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].child.take() {
            crate::process::signal(child.id(), "-TERM");
            let give_up = Instant::now() + Duration::from_secs(60);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() >= give_up {
                    let _ = child.kill();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Starts node `index` again with the data it had, and waits until it serves.
    pub fn restart(&mut self, index: usize) {
        self.kill(index);
        self.spawn(index);
        self.wait_started(index);
    }

    /// Freezes node `index` (SIGSTOP): connections stay open and nothing answers, as with a
    /// hung broker or a network partition, until [`Self::resume`].
    pub fn pause(&self, index: usize) {
        self.signal(index, "-STOP");
    }

    /// Lets a paused node go on (SIGCONT) with everything it held.
    pub fn resume(&self, index: usize) {
        self.signal(index, "-CONT");
    }

    fn signal(&self, index: usize, signal: &str) {
        let child = self.nodes[index].child.as_ref().expect("the node runs");
        crate::process::signal(child.id(), signal);
    }

    /// The index of the node leading `partition` of `topic`, as the cluster's metadata says now.
    pub fn leader_node(&self, topic: &str, partition: i32) -> Option<usize> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.brokers())
            .create()
            .expect("metadata client");
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .ok()?;
        metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)?
            .partitions()
            .iter()
            .find(|p| p.id() == partition)
            .map(|p| p.leader())
            .and_then(|leader| self.nodes.iter().position(|node| node.id == leader))
    }

    /// Creates `topic` with the cluster's replication (the way the services create theirs).
    pub async fn create_topic(&self, topic: &str, partitions: i32) {
        let mut args = KafkaArgs::new(self.brokers());
        args.replication = i32::try_from(self.size().min(3)).expect("replication");
        args.ensure_topics(&[TopicSpec {
            name: topic,
            partitions,
            replication: args.replication,
            config: vec![],
        }])
        .await
        .expect("create topic on the test cluster");
    }

    fn spawn(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        // Appended: a restarted node's log follows its earlier life.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("node log");
        node.log_start = std::fs::metadata(&node.log).map_or(0, |m| m.len() as usize);
        let child = java(&self.home)
            .arg("kafka.Kafka")
            .arg(&node.config)
            .stdout(log.try_clone().expect("node log"))
            .stderr(log)
            .spawn()
            .expect("start a Kafka node (java)");
        node.child = Some(child);
    }

    fn wait_started(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        let give_up = Instant::now() + START_DEADLINE;
        loop {
            let log = std::fs::read(&node.log).unwrap_or_default();
            let this_life = String::from_utf8_lossy(log.get(node.log_start..).unwrap_or_default());
            if this_life.contains("Kafka Server started") {
                return;
            }
            let exited = node
                .child
                .as_mut()
                .is_none_or(|child| child.try_wait().ok().flatten().is_some());
            assert!(
                !exited && Instant::now() < give_up,
                "Kafka node {} did not start: {}",
                node.id,
                tail(&this_life, 30)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for KafkaCluster {
    fn drop(&mut self) {
        for index in 0..self.nodes.len() {
            // SIGKILL ends a frozen (SIGSTOPped) node too.
            self.kill(index);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where Kafka's jars are: `ACTIVITY_TEST_KAFKA_HOME`, else where the local-services script
/// installs them (it prints the place, installing once).
fn kafka_home() -> PathBuf {
    if let Ok(home) = std::env::var("ACTIVITY_TEST_KAFKA_HOME") {
        return home.into();
    }
    let script = crate::repo_root().join("scripts/local-services.sh");
    let output = Command::new(&script)
        .arg("kafka-home")
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|error| panic!("cannot run {}: {error}", script.display()));
    assert!(
        output.status.success(),
        "{} kafka-home failed",
        script.display()
    );
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

fn java(home: &Path) -> Command {
    let mut command = Command::new("java");
    command
        .arg("-Xms64m")
        .arg("-Xmx384m")
        .arg(format!(
            "-Dlog4j2.configurationFile={}",
            home.join("log4j2.properties").display()
        ))
        .arg("-cp")
        .arg(home.join("libs/*"));
    command
}

/// Runs Kafka's storage tool and returns what it printed, failing the test when it fails.
fn run_tool(home: &Path, args: &[&str]) -> String {
    let output = java(home)
        .arg("kafka.tools.StorageTool")
        .args(args)
        .output()
        .expect("run Kafka's storage tool (java)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "kafka storage tool {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The tool prints its answer on the last line, after any log lines.
    stdout.lines().last().unwrap_or_default().trim().to_owned()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
