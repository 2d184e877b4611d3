"""The cluster as separate processes on loopback: 3 storage nodes (4 shards, replication factor 3),
ingesters and a querier sharing one block directory. Nodes are killed with SIGKILL, frozen with
SIGSTOP, added and drained while loadsim writes and then verifies every sampled acknowledged
span; no span may be lost or stored twice."""

import json
import shutil
import signal
import os
import subprocess
import time

import requests

from cluster_proc import Cluster, Probe, count_spans, duplicates, kill_leader, probe_request
from spindle_proc import Spindle, spindle_binary
from test_loadsim import loadsim_binary


def start_loadsim(ingester, querier, tenant, seed, duration, report):
    args = [
        loadsim_binary(), "--endpoint", ingester.otlp_grpc, "--services", "20", "--rate", "20",
        "--duration", duration, "--batch", "200", "--concurrency", "4", "--seed", str(seed),
        "--tenant-id", tenant, "--verify", "--verify-sample", "300",
        "--query-endpoint", f"127.0.0.1:{querier.http_port}", "--report", report,
    ]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish_loadsim(proc, report):
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    with open(report) as f:
        summary = json.load(f)
    assert summary["lost_spans"] == 0 and summary["verify"]["wrong_spans"] == 0, summary
    assert summary["spans_acknowledged"] > 0
    return summary


def wait_until(check, timeout, what):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = check()
            if last:
                return last
        except requests.RequestException as e:
            last = e
        time.sleep(0.5)
    raise AssertionError(f"{what} did not happen within {timeout} s (last: {last})")


def caught_up(cluster, node):
    """Every shard replica on `node` has applied what its leader has applied."""
    mine = {s["shard"]: s for s in node.status()["shards"]}
    for shard, replica in mine.items():
        leader = cluster.leader_of(shard)
        led = next(s for s in leader.status()["shards"] if s["shard"] == shard)
        if (replica["last_applied"] or 0) < (led["last_applied"] or 0) - 2:
            return False
    return bool(mine)


def check_no_duplicates_and_all_probes(querier, probe, tenants):
    for tenant in tenants:
        assert duplicates(querier, tenant) == 0, f"duplicated spans for {tenant}"
    acked = probe.acked_traces()
    assert acked, "the probe never got an acknowledgement"
    assert count_spans(querier, "probe") >= len(acked)
    missing = []
    for trace in acked[:: max(1, len(acked) // 200)]:
        r = requests.get(f"{querier.api}/api/v2/traces/{trace}", headers={"X-Scope-OrgID": "probe"}, timeout=30)
        if r.status_code != 200:
            missing.append(trace)
    assert not missing, f"acknowledged probe traces missing: {missing[:5]}"


def test_leader_killed_under_load():
    c = Cluster(storage=3, ingesters=2, queriers=1, storage_args=["--flush-max-age", "10s"]).start()
    try:
        querier = c.queriers[0]
        reports = [os.path.join(c.dir, f"loadsim-{i}.json") for i in range(2)]
        loads = [start_loadsim(ing, querier, f"load-{i}", i + 1, "40s", reports[i]) for i, ing in enumerate(c.ingesters)]
        probe = Probe(c.ingesters[0]).start()
        time.sleep(12)

        victim, resumed = kill_leader(c, 0, probe)
        assert resumed <= 5.0, f"ingest resumed only after {resumed:.2f} s"

        time.sleep(5)
        victim.start(timeout=90)
        wait_until(lambda: caught_up(c, victim), 60, "the restarted node catching up")

        summaries = [finish_loadsim(p, r) for p, r in zip(loads, reports)]
        probe.stop()
        check_no_duplicates_and_all_probes(querier, probe, ["load-0", "load-1"])
        for i, s in enumerate(summaries):
            assert count_spans(querier, f"load-{i}") >= s["spans_acknowledged"]
    finally:
        c.stop()


def test_node_added_then_node_drained_under_load():
    c = Cluster(storage=3, ingesters=1, queriers=1).start()
    try:
        querier = c.queriers[0]
        report = os.path.join(c.dir, "loadsim.json")
        load = start_loadsim(c.ingesters[0], querier, "load", 7, "50s", report)
        probe = Probe(c.ingesters[0], interval=0.25).start()
        time.sleep(6)

        fourth = c.add_storage_node()

        def balanced():
            state = c.cluster_state()
            held = sum(1 for s in state["shards"].values() if fourth.node_id in s["replicas"])
            settled = all(s["moving"] is None and len(s["replicas"]) == 3 for s in state["shards"].values())
            return settled and held == 3
        wait_until(balanced, 90, "replicas moving onto the new node")
        assert fourth.status()["ready"] is None

        # Drain node 1 with `spindle storage --leave`: its replicas move to the other three.
        leave = subprocess.run(
            [spindle_binary(), "storage", "--leave", "--node-id", "1", "--seeds", ",".join(c.seeds)],
            capture_output=True, text=True, timeout=180,
        )
        assert leave.returncode == 0, leave.stderr[-3000:] + leave.stdout

        def drained():
            # Committed when --leave returns; the node read from may apply it a moment later.
            state = c.cluster_state()
            return state["nodes"]["1"]["state"] == "Left" and all(
                1 not in s["replicas"] and len(s["replicas"]) == 3 for s in state["shards"].values())
        wait_until(drained, 15, "every node seeing node 1 drained")
        c.storage[0].terminate(timeout=60)

        summary = finish_loadsim(load, report)
        probe.stop()
        check_no_duplicates_and_all_probes(querier, probe, ["load"])
        assert count_spans(querier, "load") >= summary["spans_acknowledged"]
    finally:
        c.stop()


def test_frozen_leader_acknowledges_nothing_and_the_majority_goes_on():
    c = Cluster(storage=3, ingesters=1, queriers=1).start()
    try:
        querier = c.queriers[0]
        probe = Probe(c.ingesters[0]).start()
        time.sleep(3)
        victim = c.leader_of(0)
        term_before = next(s["term"] for s in victim.status()["shards"] if s["shard"] == 0)
        stopped_at = time.time()
        victim.sigstop()
        resumed = probe.resumed_after(stopped_at)
        print(f"writes resumed {resumed:.2f} s after the leader of shard 0 was frozen")
        assert resumed <= 5.0
        # The frozen node answers nothing at all, so it acknowledges nothing.
        try:
            requests.get(victim.api + "/admin/status", timeout=1)
            raise AssertionError("a frozen node answered")
        except requests.RequestException:
            pass
        time.sleep(5)
        acked_while_frozen = [r for r in probe.results if r[0] > stopped_at + resumed and r[2]]
        assert acked_while_frozen, "the majority kept acknowledging writes"

        victim.sigcont()

        def stepped_down():
            shard0 = next(s for s in victim.status()["shards"] if s["shard"] == 0)
            return shard0["role"] != "Leader" and shard0["term"] > term_before
        wait_until(stepped_down, 30, "the old leader stepping down")
        wait_until(lambda: caught_up(c, victim), 60, "the old leader catching up")
        probe.stop()
        check_no_duplicates_and_all_probes(querier, probe, ["probe"])
    finally:
        c.stop()


def test_without_a_quorum_writes_are_refused_and_none_acknowledged():
    c = Cluster(storage=3, ingesters=1, queriers=1)
    c.ingesters[0].extra_args += ["--write-timeout", "3s"]
    c.start()
    try:
        querier, ingester = c.queriers[0], c.ingesters[0]
        request, ids = probe_request(32)
        r = requests.post(ingester.otlp_http + "/v1/traces", data=request.SerializeToString(), timeout=30,
                          headers={"Content-Type": "application/x-protobuf", "X-Scope-OrgID": "probe"})
        assert r.status_code == 200
        frozen = c.storage[1:]
        for n in frozen:
            n.sigstop()
        # Every shard has lost its majority: a write is refused as retryable within the write
        # timeout (plus one attempt), never acknowledged.
        lost_request, lost_ids = probe_request(32)
        started = time.time()
        r = requests.post(ingester.otlp_http + "/v1/traces", data=lost_request.SerializeToString(), timeout=30,
                          headers={"Content-Type": "application/x-protobuf", "X-Scope-OrgID": "probe"})
        took = time.time() - started
        assert r.status_code == 503, (r.status_code, r.text)
        assert r.headers.get("Retry-After") == "1"
        assert took < 10, f"the refusal took {took:.1f} s"
        for n in frozen:
            n.sigcont()
        wait_until(lambda: all(n.is_ready() for n in c.storage), 60, "the cluster recovering")
        r = requests.post(ingester.otlp_http + "/v1/traces", data=lost_request.SerializeToString(), timeout=30,
                          headers={"Content-Type": "application/x-protobuf", "X-Scope-OrgID": "probe"})
        assert r.status_code == 200, "the client's retry goes through once the majority is back"
        assert duplicates(querier, "probe") == 0
        for trace in ids + lost_ids:
            r = requests.get(f"{querier.api}/api/v2/traces/{trace}", headers={"X-Scope-OrgID": "probe"}, timeout=30)
            assert r.status_code == 200, trace
        assert count_spans(querier, "probe") == 64
    finally:
        c.stop()


def test_added_shards_take_new_traces_and_old_ones_stay_readable():
    s = Spindle(extra_args=["--flush-max-size", "64KiB", "--flush-max-age", "1h"]).start()
    try:
        sent = []

        def send(n):
            for _ in range(n):
                request, ids = probe_request(20)
                r = requests.post(s.otlp_http + "/v1/traces", data=request.SerializeToString(), timeout=30,
                                  headers={"Content-Type": "application/x-protobuf", "X-Scope-OrgID": "grow"})
                assert r.status_code == 200, r.text
                sent.extend(ids)
        send(60)
        wait_until(lambda: s.status()["shards"][0]["blocks"] > 0, 30, "a first block")
        send(5)  # some spans stay unflushed on shard 0
        r = requests.post(s.api + "/admin/shards", params={"add": 3}, timeout=30)
        assert r.status_code == 200 and r.json()["applied"], r.text
        wait_until(lambda: len(s.status()["shards"]) == 4 and s.is_ready(), 30, "the new shards starting")
        send(40)
        per_shard = [sh["unflushed_bytes"] + sh["blocks"] for sh in s.status()["shards"]]
        assert all(x > 0 for x in per_shard), f"new traces reach the new shards: {per_shard}"
        assert count_spans(s, "grow") == len(sent)
        assert duplicates(s, "grow") == 0
        for trace in sent[::25]:
            r = requests.get(f"{s.api}/api/v2/traces/{trace}", headers={"X-Scope-OrgID": "grow"}, timeout=30)
            assert r.status_code == 200, trace
    finally:
        s.stop()


def test_whole_cluster_killed_and_restarted_keeps_everything():
    """Every storage node killed with SIGKILL at once (a power cut), then started again: the
    metadata, the shards and every acknowledged span come back, flushed or not."""
    c = Cluster(storage=3, ingesters=1, queriers=1, storage_args=["--flush-max-size", "16KiB"]).start()
    try:
        querier, ingester = c.queriers[0], c.ingesters[0]
        sent = []
        for _ in range(40):
            request, ids = probe_request(25)
            r = requests.post(ingester.otlp_http + "/v1/traces", data=request.SerializeToString(), timeout=30,
                              headers={"Content-Type": "application/x-protobuf", "X-Scope-OrgID": "power"})
            assert r.status_code == 200, r.text
            sent.extend(ids)
        wait_until(lambda: any(s["blocks"] for n in c.storage for s in n.status()["shards"]), 30, "a first block")
        state_before = c.cluster_state()
        for n in c.storage:
            n.kill9()
        for n in c.storage:
            n.start(wait=False)
        for n in c.storage:
            n.wait_ready(90)
        # A restarted node may answer before it has applied its whole log.
        wait_until(lambda: c.cluster_state()["shards"] == state_before["shards"], 15, "the layout as before the kill")
        assert c.cluster_state()["cluster_id"] == state_before["cluster_id"]
        wait_until(lambda: querier.is_ready(), 30, "the querier reaching the metadata again")
        wait_until(lambda: count_spans(querier, "power") == len(sent), 30, "every span readable again")
        assert duplicates(querier, "power") == 0
        for trace in sent[::50]:
            r = requests.get(f"{querier.api}/api/v2/traces/{trace}", headers={"X-Scope-OrgID": "power"}, timeout=30)
            assert r.status_code == 200, trace
    finally:
        c.stop()


def test_node_with_a_wiped_data_dir_stays_out_until_its_old_self_is_drained():
    """A storage node killed and restarted with an empty data directory under its old id has
    lost what it acknowledged and voted: it must not take part (not ready, no Raft) while the
    cluster counts that id as a member. The rest keeps writing; after `storage --leave` drains
    the old member, the same process joins as a new node. No acknowledged span is lost."""
    c = Cluster(storage=4, ingesters=1, queriers=1).start()
    try:
        querier = c.queriers[0]
        probe = Probe(c.ingesters[0], interval=0.25).start()
        time.sleep(4)
        victim = c.storage[3]
        victim.kill9()
        shutil.rmtree(os.path.join(victim.data_dir, "data"))
        victim.start(wait=False)

        def refused():
            r = requests.get(victim.api + "/ready", timeout=2)
            return r.status_code == 503 and "empty data directory" in r.text
        wait_until(refused, 30, "the wiped node refusing to take part")
        time.sleep(5)
        assert refused(), "the wiped node became ready under its old id"
        assert victim.proc.poll() is None
        written = time.time()
        assert probe.resumed_after(written) < 10, "the cluster stopped taking writes"

        leave = subprocess.run(
            [spindle_binary(), "storage", "--leave", "--node-id", str(victim.node_id), "--seeds", ",".join(c.seeds[:3])],
            capture_output=True, text=True, timeout=240,
        )
        assert leave.returncode == 0, leave.stderr[-3000:] + leave.stdout
        wait_until(lambda: victim.is_ready(), 90, "the wiped node joining as a new node")
        # The node is ready once its own copy of the metadata shows it active; the node this
        # reads from may apply that entry a moment later.
        wait_until(
            lambda: c.cluster_state()["nodes"][str(victim.node_id)]["state"] == "Active",
            15,
            "every node seeing the wiped node active",
        )
        assert "joining as a new node" in victim.read_log()

        probe.stop()
        check_no_duplicates_and_all_probes(querier, probe, [])
    finally:
        c.stop()


def test_all_storage_nodes_stopped_at_once_exit_cleanly_and_keep_everything():
    """SIGTERM to every storage node at once (helm uninstall, a node pool drained): each exits 0
    within the grace period even when the last leaders can no longer commit their final flush
    (their spans stay in the Raft log), and after a restart every acknowledged span is there."""
    c = Cluster(storage=3, ingesters=1, queriers=1).start()
    try:
        probe = Probe(c.ingesters[0], interval=0.1).start()
        time.sleep(5)
        probe.stop()
        for n in c.storage:
            n.proc.send_signal(signal.SIGTERM)
        started = time.time()
        codes = [n.proc.wait(timeout=90) for n in c.storage]
        took = time.time() - started
        logs = "\n".join(n.read_log()[-1500:] for n in c.storage)
        assert codes == [0, 0, 0], f"exit codes {codes} after {took:.1f} s: {logs}"
        print(f"all three storage nodes stopped in {took:.1f} s")
        for n in c.storage:
            n.start(wait=False)
        for n in c.storage:
            n.wait_ready(90)
        check_no_duplicates_and_all_probes(c.queriers[0], probe, [])
    finally:
        c.stop()
