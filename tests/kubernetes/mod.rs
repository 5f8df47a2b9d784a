//! A Kubernetes manifest read the way the API server, the kubelet and the network plugin read
//! it: its YAML documents; a pod's user, groups and volumes (a StatefulSet's claims among
//! them), laid out as files with the kubelet's owners and modes; and what its NetworkPolicies
//! let through.
//!
//! Only what the shipped example uses is modelled. Anything else (a volume's `items`, a
//! `subPath`, `matchExpressions`, ...) is an error rather than a guess, so the model never
//! quietly says yes to something it does not understand.

use anyhow::{Context as _, Result, bail, ensure};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};
use yaml_rust2::parser::{Event, EventReceiver, Parser};
use yaml_rust2::scanner::TScalarStyle;

/// A YAML node. Scalars keep their text: Kubernetes reads YAML 1.1 (`0440` is octal), which a
/// YAML 1.2 loader would turn into the decimal 440.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Scalar { text: String, plain: bool },
    Seq(Vec<Node>),
    Map(Vec<(String, Node)>),
}

impl Node {
    pub fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The node at a path of keys.
    pub fn at(&self, keys: &[&str]) -> Option<&Node> {
        keys.iter().try_fold(self, |node, key| node.get(key))
    }

    pub fn str(&self) -> Option<&str> {
        match self {
            Node::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// An integer as Kubernetes reads it: decimal, `0x` hex, and octal written `0o440` or,
    /// as YAML 1.1 has it, `0440`. Quoted scalars are strings, not integers.
    pub fn int(&self) -> Option<i64> {
        let Node::Scalar { text, plain: true } = self else {
            return None;
        };
        let (digits, radix) = if let Some(hex) = text.strip_prefix("0x") {
            (hex, 16)
        } else if let Some(octal) = text.strip_prefix("0o") {
            (octal, 8)
        } else if text.len() > 1 && text.starts_with('0') {
            (&text[1..], 8)
        } else {
            (text.as_str(), 10)
        };
        i64::from_str_radix(digits, radix).ok()
    }

    pub fn items(&self) -> &[Node] {
        match self {
            Node::Seq(items) => items,
            _ => &[],
        }
    }

    /// A `map[string]string` such as `matchLabels`.
    pub fn labels(&self) -> Result<BTreeMap<String, String>> {
        match self {
            Node::Map(entries) => entries
                .iter()
                .map(|(k, v)| {
                    let v = v
                        .str()
                        .with_context(|| format!("label {k} is not a string"))?;
                    Ok((k.clone(), v.to_owned()))
                })
                .collect(),
            _ => bail!("not a map of labels: {self:?}"),
        }
    }
}

/// A collection being read: a sequence, or a map and the key waiting for its value.
enum Frame {
    Seq(Vec<Node>),
    Map(Vec<(String, Node)>, Option<String>),
}

/// Builds [`Node`]s from the parser's events.
#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    docs: Vec<Node>,
    error: Option<String>,
}

impl Builder {
    fn push(&mut self, node: Node) {
        match self.stack.last_mut() {
            None => self.docs.push(node),
            Some(Frame::Seq(items)) => items.push(node),
            Some(Frame::Map(entries, key)) => match key.take() {
                // As kubectl has it: a key given twice is an error, not one value or the other
                // (two documents without `---` between them read as one map).
                Some(k) if entries.iter().any(|(e, _)| *e == k) => {
                    self.error = Some(format!("the key {k} is given twice in one map"));
                }
                Some(k) => entries.push((k, node)),
                None => match node {
                    Node::Scalar { text, .. } => *key = Some(text),
                    other => {
                        self.error = Some(format!("a map key that is not a scalar: {other:?}"));
                    }
                },
            },
        }
    }
}

impl EventReceiver for Builder {
    fn on_event(&mut self, event: Event) {
        match event {
            Event::Scalar(text, style, _, _) => self.push(Node::Scalar {
                text,
                plain: style == TScalarStyle::Plain,
            }),
            Event::SequenceStart(..) => self.stack.push(Frame::Seq(Vec::new())),
            Event::MappingStart(..) => self.stack.push(Frame::Map(Vec::new(), None)),
            Event::SequenceEnd | Event::MappingEnd => match self.stack.pop() {
                Some(Frame::Seq(items)) => self.push(Node::Seq(items)),
                Some(Frame::Map(entries, _)) => self.push(Node::Map(entries)),
                None => {}
            },
            Event::Alias(_) => self.error = Some("YAML aliases are not supported".to_owned()),
            _ => {}
        }
    }
}

/// The objects of a multi-document manifest.
pub struct Manifest {
    pub objects: Vec<Node>,
}

impl Manifest {
    pub fn parse(text: &str) -> Result<Self> {
        let mut builder = Builder::default();
        Parser::new_from_str(text)
            .load(&mut builder, true)
            .context("manifest is not valid YAML")?;
        if let Some(error) = builder.error {
            bail!("manifest: {error}");
        }
        let objects = builder
            .docs
            .into_iter()
            .filter(|doc| matches!(doc, Node::Map(_)))
            .collect();
        Ok(Self { objects })
    }

    pub fn all<'a>(&'a self, kind: &str) -> impl Iterator<Item = &'a Node> + use<'a> {
        let kind = kind.to_owned();
        self.objects
            .iter()
            .filter(move |o| o.get("kind").and_then(Node::str) == Some(kind.as_str()))
    }

    pub fn object(&self, kind: &str, name: &str) -> Result<&Node> {
        self.all(kind)
            .find(|o| o.at(&["metadata", "name"]).and_then(Node::str) == Some(name))
            .with_context(|| format!("no {kind} {name} in the manifest"))
    }
}

pub fn namespace_of(object: &Node) -> &str {
    object
        .at(&["metadata", "namespace"])
        .and_then(Node::str)
        .unwrap_or("default")
}

// ---------------------------------------------------------------------------
// Pods, volumes and files
// ---------------------------------------------------------------------------

/// Where a volume's files come from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    ConfigMap(String),
    Secret(String),
    /// A StatefulSet's `volumeClaimTemplates` entry: each pod's own PersistentVolumeClaim.
    Claim(String),
}

#[derive(Debug, Clone)]
pub struct Mount {
    pub path: PathBuf,
    pub source: Source,
    /// The volume's `defaultMode`, or Kubernetes' default, 0644; for a claim, the mode of its
    /// file system's root as `mkfs` leaves it, 0755.
    pub mode: u32,
}

/// The first container of a pod template, as its process sees the system.
#[derive(Debug, Clone)]
pub struct Pod {
    pub uid: u32,
    /// The primary group (`runAsGroup`).
    pub gid: u32,
    /// Supplementary groups: `fsGroup` and `supplementalGroups`.
    pub groups: Vec<u32>,
    pub fs_group: Option<u32>,
    pub args: Vec<String>,
    pub mounts: Vec<Mount>,
    /// Container ports by name.
    pub ports: BTreeMap<String, u16>,
}

fn id(node: Option<&Node>, what: &str) -> Result<Option<u32>> {
    node.map(|n| {
        n.int()
            .and_then(|v| u32::try_from(v).ok())
            .with_context(|| format!("{what} is not a user or group id"))
    })
    .transpose()
}

impl Pod {
    /// The pod of a Deployment or a StatefulSet (anything with `spec.template`).
    pub fn of(workload: &Node) -> Result<Self> {
        let spec = workload
            .at(&["spec", "template", "spec"])
            .context("no pod template")?;
        let container = spec
            .get("containers")
            .and_then(|c| c.items().first())
            .context("no container")?;
        let pod_sc = spec.get("securityContext");
        let sc = |key: &str| {
            container
                .at(&["securityContext", key])
                .or_else(|| pod_sc.and_then(|s| s.get(key)))
        };
        let uid = id(sc("runAsUser"), "runAsUser")?.context("no runAsUser: the image's user")?;
        let gid = id(sc("runAsGroup"), "runAsGroup")?.context("no runAsGroup")?;
        let fs_group = id(pod_sc.and_then(|s| s.get("fsGroup")), "fsGroup")?;
        let mut groups: Vec<u32> = fs_group.into_iter().collect();
        for g in pod_sc
            .and_then(|s| s.get("supplementalGroups"))
            .map(Node::items)
            .unwrap_or_default()
        {
            groups.extend(id(Some(g), "supplementalGroups")?);
        }
        let args = container
            .get("args")
            .map(Node::items)
            .unwrap_or_default()
            .iter()
            .map(|a| a.str().map(str::to_owned).context("an arg is not a string"))
            .collect::<Result<_>>()?;
        let mut ports = BTreeMap::new();
        for p in container.get("ports").map(Node::items).unwrap_or_default() {
            let number = p.get("containerPort").and_then(Node::int);
            let number = number
                .and_then(|n| u16::try_from(n).ok())
                .context("containerPort")?;
            if let Some(name) = p.get("name").and_then(Node::str) {
                ports.insert(name.to_owned(), number);
            }
        }
        let claims = workload
            .at(&["spec", "volumeClaimTemplates"])
            .map(Node::items)
            .unwrap_or_default();
        let mounts = mounts(spec, claims, container)?;
        Ok(Self {
            uid,
            gid,
            groups,
            fs_group,
            args,
            mounts,
            ports,
        })
    }

    /// The value after `flag` in the container's args.
    pub fn arg(&self, flag: &str) -> Option<&str> {
        let at = self.args.iter().position(|a| a == flag)?;
        self.args.get(at + 1).map(String::as_str)
    }
}

/// The container's mounts, of the pod's `volumes` or, as a StatefulSet's controller adds them,
/// of its `claims`.
fn mounts(spec: &Node, claims: &[Node], container: &Node) -> Result<Vec<Mount>> {
    let volumes = spec.get("volumes").map(Node::items).unwrap_or_default();
    let mut mounts = Vec::new();
    for m in container
        .get("volumeMounts")
        .map(Node::items)
        .unwrap_or_default()
    {
        let name = m
            .get("name")
            .and_then(Node::str)
            .context("volumeMount name")?;
        ensure!(
            m.get("subPath").is_none(),
            "{name}: subPath is not modelled"
        );
        let path = m
            .get("mountPath")
            .and_then(Node::str)
            .context("mountPath")?;
        let volume = volumes
            .iter()
            .find(|v| v.get("name").and_then(Node::str) == Some(name));
        let claim = claims
            .iter()
            .any(|c| c.at(&["metadata", "name"]).and_then(Node::str) == Some(name));
        let volume = match (volume, claim) {
            (Some(_), true) => bail!("{name} is both a volume and a claim template"),
            (None, true) => {
                mounts.push(Mount {
                    path: PathBuf::from(path),
                    source: Source::Claim(name.to_owned()),
                    mode: 0o755,
                });
                continue;
            }
            (volume, false) => volume.with_context(|| format!("no volume {name}"))?,
        };
        let (source, body) = if let Some(cm) = volume.get("configMap") {
            let n = cm
                .get("name")
                .and_then(Node::str)
                .context("configMap name")?;
            (Source::ConfigMap(n.to_owned()), cm)
        } else if let Some(secret) = volume.get("secret") {
            let n = secret
                .get("secretName")
                .and_then(Node::str)
                .context("secretName")?;
            (Source::Secret(n.to_owned()), secret)
        } else {
            bail!("volume {name}: only configMap and secret volumes are modelled");
        };
        ensure!(
            body.get("items").is_none(),
            "volume {name}: items are not modelled"
        );
        let mode = match body.get("defaultMode") {
            None => 0o644,
            Some(m) => m
                .int()
                .and_then(|m| u32::try_from(m).ok())
                .filter(|m| *m <= 0o777)
                .with_context(|| format!("volume {name}: defaultMode {m:?}"))?,
        };
        mounts.push(Mount {
            path: PathBuf::from(path),
            source,
            mode,
        });
    }
    // Outer mounts first: a mount inside another one is laid over it.
    mounts.sort_by_key(|m| m.path.components().count());
    Ok(mounts)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File(Vec<u8>),
    /// A symbolic link and its (relative) target.
    Link(PathBuf),
}

/// A file, directory or link at an absolute path inside the container.
#[derive(Debug, Clone)]
pub struct Entry {
    pub path: PathBuf,
    pub kind: Kind,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

/// The kubelet's timestamped directory of an atomically written volume.
const TIMESTAMPED: &str = "..2026_01_01_00_00_00.000000000";

/// The files of the pod's volumes as the kubelet writes them (its atomic writer): in each
/// volume, a timestamped directory holding the files, `..data` linking to it, and one link
/// per key to `..data/KEY`. Everything belongs to root. The volume's own directory is
/// world-writable (sticky on a Secret's tmpfs), the timestamped one 0755, each file has the
/// volume's mode. With an `fsGroup`, every file and directory gets that group, and the kubelet
/// adds group read to files (0440: these volumes are read-only) and set-group-ID to
/// directories. `data` holds each source's files by key.
///
/// A claim is a new, empty file system: its root directory, root's. With an `fsGroup` the
/// kubelet gives it that group, group read, write and search, and set-group-ID (on storage
/// that supports ownership management, as block storage does; NFS, for one, does not).
pub fn kubelet_layout(
    pod: &Pod,
    data: &BTreeMap<Source, BTreeMap<String, Vec<u8>>>,
) -> Result<Vec<Entry>> {
    let gid = pod.fs_group.unwrap_or(0);
    let (file_bits, dir_bits) = if pod.fs_group.is_some() {
        (0o440, 0o2000)
    } else {
        (0, 0)
    };
    let mut entries = Vec::new();
    for mount in &pod.mounts {
        let root_mode = match mount.source {
            Source::Secret(_) => 0o1777,
            Source::ConfigMap(_) => 0o777,
            Source::Claim(_) => {
                let group_bits = if pod.fs_group.is_some() { 0o2070 } else { 0 };
                entries.push(Entry {
                    path: mount.path.clone(),
                    kind: Kind::Dir,
                    uid: 0,
                    gid,
                    mode: mount.mode | group_bits,
                });
                continue;
            }
        };
        let files = data
            .get(&mount.source)
            .with_context(|| format!("no data for {:?}", mount.source))?;
        let dir = |path: PathBuf, mode: u32| Entry {
            path,
            kind: Kind::Dir,
            uid: 0,
            gid,
            mode: mode | dir_bits,
        };
        let stamped = mount.path.join(TIMESTAMPED);
        entries.push(dir(mount.path.clone(), root_mode));
        entries.push(dir(stamped.clone(), 0o755));
        let link = |path: PathBuf, target: &str| Entry {
            path,
            kind: Kind::Link(PathBuf::from(target)),
            uid: 0,
            gid,
            mode: 0o777,
        };
        entries.push(link(mount.path.join("..data"), TIMESTAMPED));
        for (key, contents) in files {
            ensure!(
                !key.contains('/') && !key.starts_with(".."),
                "bad key {key:?}"
            );
            entries.push(Entry {
                path: stamped.join(key),
                kind: Kind::File(contents.clone()),
                uid: 0,
                gid,
                mode: mount.mode | file_bits,
            });
            entries.push(link(mount.path.join(key), &format!("..data/{key}")));
        }
    }
    Ok(entries)
}

fn find<'a>(entries: &'a [Entry], path: &Path) -> Option<&'a Entry> {
    // A later entry (a mount laid over a path) hides an earlier one.
    entries.iter().rev().find(|e| e.path == path)
}

/// `path` with every link followed, as the kernel resolves it.
fn resolve(entries: &[Entry], path: &Path, depth: usize) -> Result<PathBuf> {
    ensure!(
        depth < 40,
        "{}: too many levels of symbolic links",
        path.display()
    );
    let parts: Vec<Component> = path.components().collect();
    let mut real = PathBuf::from("/");
    for (i, part) in parts.iter().enumerate() {
        match part {
            Component::RootDir | Component::CurDir => continue,
            Component::ParentDir => {
                real.pop();
                continue;
            }
            Component::Normal(name) => {
                let next = real.join(name);
                if let Some(Entry {
                    kind: Kind::Link(target),
                    ..
                }) = find(entries, &next)
                {
                    let mut rest = real.join(target);
                    rest.extend(&parts[i + 1..]);
                    return resolve(entries, &rest, depth + 1);
                }
                real = next;
            }
            Component::Prefix(_) => bail!("not a Unix path"),
        }
    }
    Ok(real)
}

/// The pod's process as the kernel sees it: its uid and every group it holds.
struct Process {
    uid: u32,
    gids: Vec<u32>,
}

impl Process {
    fn of(pod: &Pod) -> Self {
        let gids = std::iter::once(pod.gid)
            .chain(pod.groups.iter().copied())
            .collect();
        Self { uid: pod.uid, gids }
    }

    /// Whether the process has every one of `bits` (read 4, write 2, search 1) on `entry`.
    fn permits(&self, entry: &Entry, bits: u32) -> bool {
        let shift = if entry.uid == self.uid {
            6
        } else if self.gids.contains(&entry.gid) {
            3
        } else {
            0
        };
        self.uid == 0 || (entry.mode >> shift) & bits == bits
    }

    fn who(&self) -> String {
        format!("uid {} (groups {:?})", self.uid, self.gids)
    }

    /// The entry `path` leads to, once the process has searched every directory on the way.
    /// Directories outside the volumes (`/`, `/etc`) are the image's, root's and 0755.
    fn reach<'a>(&self, entries: &'a [Entry], path: &Path) -> Result<&'a Entry> {
        let real = resolve(entries, path, 0)?;
        for dir in real.ancestors().skip(1) {
            if let Some(entry) = find(entries, dir) {
                ensure!(
                    self.permits(entry, 0o1),
                    "{}: {} cannot enter {} ({}:{} {:o})",
                    path.display(),
                    self.who(),
                    dir.display(),
                    entry.uid,
                    entry.gid,
                    entry.mode
                );
            }
        }
        find(entries, &real).with_context(|| format!("{}: no such file", path.display()))
    }
}

/// Whether the pod's process may read `path` under `entries`, as the kernel decides: search
/// permission on every directory on the way, read permission on the file.
pub fn check_readable(entries: &[Entry], pod: &Pod, path: &Path) -> Result<()> {
    let process = Process::of(pod);
    let entry = process.reach(entries, path)?;
    ensure!(
        matches!(entry.kind, Kind::File(_)),
        "{}: not a file",
        path.display()
    );
    ensure!(
        process.permits(entry, 0o4),
        "{}: {} cannot read it ({}:{} {:o})",
        path.display(),
        process.who(),
        entry.uid,
        entry.gid,
        entry.mode
    );
    Ok(())
}

/// Whether the pod's process may create files in the directory `path`: search permission on
/// every directory on the way, write and search permission on the directory itself.
pub fn check_writable(entries: &[Entry], pod: &Pod, path: &Path) -> Result<()> {
    let process = Process::of(pod);
    let entry = process.reach(entries, path)?;
    ensure!(
        matches!(entry.kind, Kind::Dir),
        "{}: not a directory",
        path.display()
    );
    ensure!(
        process.permits(entry, 0o3),
        "{}: {} cannot write in it ({}:{} {:o})",
        path.display(),
        process.who(),
        entry.uid,
        entry.gid,
        entry.mode
    );
    Ok(())
}

/// Writes `entries` under `root` with their owners and modes (needs root).
pub fn write_layout(entries: &[Entry], root: &Path) -> Result<()> {
    use std::os::unix::fs::{PermissionsExt, chown, lchown, symlink};
    for entry in entries {
        let path = root.join(entry.path.strip_prefix("/")?);
        match &entry.kind {
            Kind::Dir => std::fs::create_dir_all(&path)?,
            Kind::File(contents) => std::fs::write(&path, contents)?,
            Kind::Link(target) => symlink(target, &path)?,
        }
        if let Kind::Link(_) = entry.kind {
            lchown(&path, Some(entry.uid), Some(entry.gid))?;
        } else {
            chown(&path, Some(entry.uid), Some(entry.gid))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(entry.mode))?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// NetworkPolicies
// ---------------------------------------------------------------------------

/// One end of a connection.
#[derive(Debug, Clone)]
pub enum Peer<'a> {
    /// A pod: its namespace's name (which is its `kubernetes.io/metadata.name` label) and labels.
    Pod(&'a str, &'a [(&'a str, &'a str)]),
    /// An address outside the cluster.
    Outside(IpAddr),
}

/// The destination port of a connection, with its name on the destination pod, if any.
#[derive(Debug, Clone, Copy)]
pub struct Port<'a> {
    pub protocol: &'a str,
    pub number: u16,
    pub name: Option<&'a str>,
}

pub fn tcp(number: u16) -> Port<'static> {
    Port {
        protocol: "TCP",
        number,
        name: None,
    }
}

pub fn udp(number: u16) -> Port<'static> {
    Port {
        protocol: "UDP",
        number,
        name: None,
    }
}

fn labels_match(selector: &Node, labels: &BTreeMap<String, String>) -> Result<bool> {
    ensure!(
        selector.get("matchExpressions").is_none(),
        "matchExpressions are not modelled"
    );
    let Some(wanted) = selector.get("matchLabels") else {
        return Ok(true);
    };
    Ok(wanted
        .labels()?
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v)))
}

fn pod_labels(peer: &Peer<'_>) -> BTreeMap<String, String> {
    match peer {
        Peer::Pod(_, labels) => labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        Peer::Outside(_) => BTreeMap::new(),
    }
}

/// Whether one element of `from` or `to`, in a policy of namespace `ns`, matches `peer`.
fn element_matches(element: &Node, ns: &str, peer: &Peer<'_>) -> Result<bool> {
    if let Some(block) = element.get("ipBlock") {
        let Peer::Outside(ip) = peer else {
            // Whether an ipBlock matches pod addresses depends on the plugin: count it as not.
            return Ok(false);
        };
        let cidr: ipnet::IpNet = block
            .get("cidr")
            .and_then(Node::str)
            .context("cidr")?
            .parse()?;
        let mut except = Vec::new();
        for e in block.get("except").map(Node::items).unwrap_or_default() {
            except.push(e.str().context("except")?.parse::<ipnet::IpNet>()?);
        }
        return Ok(cidr.contains(ip) && !except.iter().any(|e| e.contains(ip)));
    }
    let Peer::Pod(peer_ns, _) = peer else {
        return Ok(false);
    };
    let ns_ok = match element.get("namespaceSelector") {
        None => *peer_ns == ns,
        Some(selector) => {
            let ns_labels = BTreeMap::from([(
                "kubernetes.io/metadata.name".to_owned(),
                (*peer_ns).to_owned(),
            )]);
            labels_match(selector, &ns_labels)?
        }
    };
    let pod_ok = match element.get("podSelector") {
        None => true,
        Some(selector) => labels_match(selector, &pod_labels(peer))?,
    };
    Ok(ns_ok && pod_ok)
}

fn port_matches(ports: Option<&Node>, port: Port<'_>) -> bool {
    let Some(ports) = ports else { return true };
    if ports.items().is_empty() {
        return true;
    }
    ports.items().iter().any(|p| {
        let protocol = p.get("protocol").and_then(Node::str).unwrap_or("TCP");
        let number_ok = match p.get("port") {
            None => true,
            Some(n) => match n.int() {
                Some(first) => {
                    let last = p.get("endPort").and_then(Node::int).unwrap_or(first);
                    (first..=last).contains(&i64::from(port.number))
                }
                None => n.str() == port.name,
            },
        };
        protocol == port.protocol && number_ok
    })
}

/// Whether the NetworkPolicies of `manifest` let the pod `pod` (namespace, labels) receive
/// (`direction` "Ingress") a connection from `other`, or open one (`"Egress"`) to it, on
/// `port`. A pod no policy of its direction selects is not isolated: everything is allowed.
pub fn allows(
    manifest: &Manifest,
    direction: &str,
    (ns, labels): (&str, &[(&str, &str)]),
    other: &Peer<'_>,
    port: Port<'_>,
) -> Result<bool> {
    let own = pod_labels(&Peer::Pod(ns, labels));
    let (rules_key, peers_key) = match direction {
        "Ingress" => ("ingress", "from"),
        "Egress" => ("egress", "to"),
        _ => bail!("direction {direction}"),
    };
    let mut isolated = false;
    for policy in manifest
        .all("NetworkPolicy")
        .filter(|p| namespace_of(p) == ns)
    {
        let spec = policy.get("spec").context("NetworkPolicy without spec")?;
        let selector = spec.get("podSelector").context("podSelector is required")?;
        if !labels_match(selector, &own)? {
            continue;
        }
        let types: Vec<&str> = match spec.get("policyTypes") {
            Some(t) => t.items().iter().filter_map(Node::str).collect(),
            None if spec.get("egress").is_some() => vec!["Ingress", "Egress"],
            None => vec!["Ingress"],
        };
        if !types.contains(&direction) {
            continue;
        }
        isolated = true;
        for rule in spec.get(rules_key).map(Node::items).unwrap_or_default() {
            if !port_matches(rule.get("ports"), port) {
                continue;
            }
            let peers = rule.get(peers_key).map(Node::items).unwrap_or_default();
            if peers.is_empty() {
                return Ok(true);
            }
            for element in peers {
                if element_matches(element, ns, other)? {
                    return Ok(true);
                }
            }
        }
    }
    Ok(!isolated)
}

/// Every `from` element of the ingress rules in namespace `ns` that open `port` to the pods
/// labelled `labels`; `None` in the list stands for a rule without `from` (anyone).
pub fn ingress_sources<'a>(
    manifest: &'a Manifest,
    (ns, labels): (&str, &[(&str, &str)]),
    port: Port<'_>,
) -> Result<Vec<Option<&'a Node>>> {
    let own = pod_labels(&Peer::Pod(ns, labels));
    let mut sources = Vec::new();
    for policy in manifest
        .all("NetworkPolicy")
        .filter(|p| namespace_of(p) == ns)
    {
        let spec = policy.get("spec").context("NetworkPolicy without spec")?;
        if !labels_match(spec.get("podSelector").context("podSelector")?, &own)? {
            continue;
        }
        for rule in spec.get("ingress").map(Node::items).unwrap_or_default() {
            if !port_matches(rule.get("ports"), port) {
                continue;
            }
            match rule.get("from").map(Node::items).unwrap_or_default() {
                [] => sources.push(None),
                peers => sources.extend(peers.iter().map(Some)),
            }
        }
    }
    Ok(sources)
}
