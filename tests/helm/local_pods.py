"""Runs the pods of rendered Helm manifests as local `spindle` processes on 127.0.0.1.

Each container's command, args and env are taken from the manifests as they are, and only what
cannot exist outside Kubernetes is rewritten:
- the image's `spindle` becomes $SPINDLE_BIN;
- every volume mount becomes a local directory (ConfigMaps are written out as files, emptyDirs
  and PersistentVolumeClaims become empty directories), and paths under a mount path point there;
- every container port gets a free loopback port: `0.0.0.0:<port>` becomes
  `127.0.0.1:<its port>`, and `<pod>.<service>.<namespace>.svc.<domain>:<port>` (a StatefulSet
  pod's DNS name) becomes `127.0.0.1:<that pod's port>`;
- object store URLs (s3://, az://, gs://) become one shared local directory, file:///...;
- env from the downward API (pod name, namespace, the StatefulSet pod-index label) is filled in,
  and $(VAR) references are expanded the way the kubelet does.
"""

import base64
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import requests
import yaml

NAMESPACE_DEFAULT = "default"
STORE_URL = re.compile(r"^(s3|az|gs)://")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def spindle_bin():
    path = os.environ.get("SPINDLE_BIN") or os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/spindle-target")), "debug", "spindle")
    if not os.path.exists(path):
        raise RuntimeError(f"spindle binary not found at {path} (set SPINDLE_BIN)")
    return path


def loadsim_bin():
    path = os.path.join(os.path.dirname(spindle_bin()), "loadsim")
    if not os.path.exists(path):
        raise RuntimeError(f"loadsim not found at {path}")
    return path


def expand(text, env):
    """Kubernetes' $(VAR) expansion: known variables are replaced, $$ escapes, unknown ones stay."""
    def sub(m):
        if m.group(0).startswith("$$"):
            return m.group(0)[1:]
        return env.get(m.group(1), m.group(0))
    return re.sub(r"\$\$\([A-Za-z_][A-Za-z0-9_]*\)|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", sub, text)


class LocalPod:
    """One pod of a workload, run as a local process."""

    def __init__(self, cluster, workload, name, pod_index=None):
        self.cluster = cluster
        self.workload = workload
        self.name = name
        self.pod_index = pod_index
        template = workload["spec"]["template"]
        self.labels = dict(template["metadata"].get("labels", {}))
        if pod_index is not None:
            self.labels["apps.kubernetes.io/pod-index"] = str(pod_index)
        self.spec = template["spec"]
        containers = self.spec["containers"]
        assert len(containers) == 1, f"{name}: expected one container"
        self.container = containers[0]
        self.dir = tempfile.mkdtemp(prefix=f"helm-{name}-", dir=cluster.dir)
        self.ports = {p["containerPort"]: free_port() for p in self.container.get("ports", [])}
        self.port_names = {p["name"]: p["containerPort"] for p in self.container.get("ports", [])}
        self.proc = None
        self.log_path = os.path.join(self.dir, "spindle.log")

    # ----------------------------------------------------------------------------------- setup

    def _mounts(self):
        """mountPath -> local directory, with ConfigMap contents written out."""
        volumes = {v["name"]: v for v in self.spec.get("volumes", [])}
        claims = {c["metadata"]["name"] for c in self.workload["spec"].get("volumeClaimTemplates", [])}
        mounts = {}
        for m in self.container.get("volumeMounts", []):
            local = os.path.join(self.dir, "mnt", m["name"])
            os.makedirs(local, exist_ok=True)
            vol = volumes.get(m["name"])
            if vol is None:
                assert m["name"] in claims, f"{self.name}: volume {m['name']} is neither a volume nor a claim"
            elif "configMap" in vol:
                cm = self.cluster.object("ConfigMap", vol["configMap"]["name"])
                self._configmap_files.extend((local, k, v) for k, v in cm.get("data", {}).items())
            elif "emptyDir" not in vol:
                raise AssertionError(f"{self.name}: unsupported volume {vol}")
            mounts[m["mountPath"].rstrip("/")] = local
        return mounts

    def rewrite(self, text):
        """A string of the manifests as it must be on this machine."""
        if not isinstance(text, str):
            return text
        for mount in sorted(self.mounts, key=len, reverse=True):
            if text == mount or text.startswith(mount + "/"):
                text = self.mounts[mount] + text[len(mount):]
                break
        if STORE_URL.match(text):
            return "file://" + self.cluster.blocks
        text = re.sub(r"\b0\.0\.0\.0:(\d+)\b", lambda m: f"127.0.0.1:{self.listen_port(int(m.group(1)))}", text)
        return self.cluster.rewrite_dns(text)

    def _rewrite_tree(self, node):
        if isinstance(node, dict):
            return {k: self._rewrite_tree(v) for k, v in node.items() if k != "storage_endpoint"}
        if isinstance(node, list):
            return [self._rewrite_tree(v) for v in node]
        return self.rewrite(node)

    def _env(self):
        env = {}
        for e in self.container.get("env", []):
            if "value" in e:
                value = expand(str(e["value"]), env)
            else:
                ref = e["valueFrom"]
                if "fieldRef" in ref:
                    path = ref["fieldRef"]["fieldPath"]
                    if path == "metadata.name":
                        value = self.name
                    elif path == "metadata.namespace":
                        value = self.cluster.namespace
                    elif path in ("status.podIP", "status.hostIP"):
                        value = "127.0.0.1"
                    else:
                        m = re.fullmatch(r"metadata\.labels\['([^']+)'\]", path)
                        assert m and m.group(1) in self.labels, f"{self.name}: no value for fieldRef {path}"
                        value = self.labels[m.group(1)]
                elif "secretKeyRef" in ref:
                    secret = self.cluster.object("Secret", ref["secretKeyRef"]["name"])
                    key = ref["secretKeyRef"]["key"]
                    if key in secret.get("stringData", {}):
                        value = secret["stringData"][key]
                    else:
                        value = base64.b64decode(secret["data"][key]).decode()
                else:
                    raise AssertionError(f"{self.name}: env {e['name']} from {ref} cannot be resolved locally")
            env[e["name"]] = value
        return env

    def prepare(self):
        self._configmap_files = []
        self.mounts = self._mounts()
        self.env = {k: self.rewrite(v) for k, v in self._env().items()}
        for local, key, text in self._configmap_files:
            data = yaml.safe_load(text)
            with open(os.path.join(local, key), "w") as f:
                yaml.safe_dump(self._rewrite_tree(data), f, sort_keys=False)
        command = [expand(str(c), self.env) for c in self.container.get("command", [])]
        args = [expand(str(a), self.env) for a in self.container.get("args", [])]
        assert command and command[0] == "spindle", f"{self.name}: command {command} does not run spindle"
        self.argv = [spindle_bin()] + [self.rewrite(c) for c in command[1:] + args]

    # ----------------------------------------------------------------------------------- running

    def start(self):
        base = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
        base["SPINDLE_LOG"] = os.environ.get("SPINDLE_LOG", "info,openraft=error,openraft::replication=off")
        if getattr(self, "log", None):
            self.log.close()
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, env={**base, **self.env}, stdout=self.log, stderr=self.log,
                                     cwd=self.dir)
        return self

    def listen_port(self, number):
        """The local port for a listener on `number`. The shared config file names listeners a
        role does not open (an ingester has no internal gRPC port): those get a port too."""
        if number not in self.ports:
            self.ports[number] = free_port()
        return self.ports[number]

    def port(self, name_or_number):
        number = self.port_names.get(name_or_number, name_or_number)
        return self.ports[int(number)]

    def probe(self, kind):
        """(status, body) of the container's readinessProbe/livenessProbe/startupProbe."""
        http = self.container[kind]["httpGet"]
        r = requests.get(f"http://127.0.0.1:{self.port(http['port'])}{http['path']}", timeout=2)
        return r.status_code, r.text

    def wait_ready(self, timeout):
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}: {self.read_log()[-3000:]}")
            try:
                status, last = self.probe("readinessProbe")
                if status == 200:
                    return
            except requests.RequestException as e:
                last = str(e)
            time.sleep(0.2)
        raise AssertionError(f"{self.name} not ready after {timeout} s ({last}): {self.read_log()[-3000:]}")

    def read_log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def terminate(self, timeout=60, signal_sent=False):
        """SIGTERM as the kubelet sends it (unless already sent); SIGKILL after `timeout`.
        Returns the exit code, or "killed"."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        if not signal_sent:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
            return "killed"


class LocalCluster:
    """Every pod of the Deployments and StatefulSets in `docs`."""

    def __init__(self, docs, namespace=NAMESPACE_DEFAULT, cluster_domain="cluster.local"):
        self.docs = docs
        self.namespace = namespace
        self.domain = cluster_domain
        self.dir = tempfile.mkdtemp(prefix="spindle-helm-")
        self.blocks = os.path.join(self.dir, "blocks")
        os.makedirs(self.blocks)
        self.pods = []
        for w in docs:
            if w["kind"] == "StatefulSet":
                start = (w["spec"].get("ordinals") or {}).get("start", 0)
                for i in range(start, start + w["spec"].get("replicas", 1)):
                    self.pods.append(LocalPod(self, w, f"{w['metadata']['name']}-{i}", pod_index=i))
            elif w["kind"] == "Deployment":
                for i in range(w["spec"].get("replicas", 1)):
                    self.pods.append(LocalPod(self, w, f"{w['metadata']['name']}-{i}"))
        for p in self.pods:
            p.prepare()

    def object(self, kind, name):
        for d in self.docs:
            if d["kind"] == kind and d["metadata"]["name"] == name:
                return d
        raise KeyError(f"{kind}/{name} not rendered")

    def rewrite_dns(self, text):
        """StatefulSet pod DNS names (<pod>.<governing service>.<ns>.svc[.<domain>]:<port>)."""
        def sub(m):
            pod, service, port = m.group(1), m.group(2), int(m.group(3))
            for p in self.pods:
                if p.name == pod and p.workload["spec"].get("serviceName") == service:
                    return f"127.0.0.1:{p.port(port)}"
            return m.group(0)
        pattern = (r"\b([a-z0-9-]+)\.([a-z0-9-]+)\." + re.escape(self.namespace) +
                   r"\.svc(?:\." + re.escape(self.domain) + r")?:(\d+)\b")
        return re.sub(pattern, sub, text)

    def component(self, name):
        return [p for p in self.pods if p.labels.get("app.kubernetes.io/component") == name]

    def service_address(self, service, port_name):
        """127.0.0.1:<port> of a pod behind a Service's port, as kube-proxy would pick it: the
        Service's selector and targetPort, resolved against the pods."""
        svc = self.object("Service", service)
        selector = svc["spec"]["selector"]
        port = next(p for p in svc["spec"]["ports"] if p["name"] == port_name)
        for p in self.pods:
            if all(p.labels.get(k) == v for k, v in selector.items()):
                return f"127.0.0.1:{p.port(port.get('targetPort', port['port']))}"
        raise AssertionError(f"Service {service} selects no pod")

    def stop(self):
        """Kills what still runs and removes the directories (kept with SPINDLE_HELM_KEEP=1)."""
        for p in self.pods:
            if p.proc and p.proc.poll() is None:
                p.proc.kill()
                p.proc.wait(timeout=30)
            if p.proc and hasattr(p, "log"):
                p.log.close()
        if not os.environ.get("SPINDLE_HELM_KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)
