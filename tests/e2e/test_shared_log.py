"""The storage node's shared write-ahead log (one log for every Raft group of a node) with real
processes: a node killed again and again in the middle of cross-shard group commits loses no
acknowledged span and stores none twice; a log cut short by a crash is cut and the node goes
on; a log damaged in the middle stops the node with the file and offset, and nothing of any
group is dropped; a node of the earlier layout (one log per group) starts with the new one."""

import glob
import os
import struct
import time

import requests

from cluster_proc import Cluster, Probe, count_spans, duplicates
from test_cluster import caught_up, check_no_duplicates_and_all_probes, finish_loadsim, start_loadsim, wait_until


def segments(node):
    return sorted(glob.glob(os.path.join(node.data_dir, "data", "raft", "wal", "*.wal")))


def batch_offsets(path):
    """Offsets of the write batches in a segment (file header 24 bytes; batch header: magic,
    body length, crc)."""
    data = open(path, "rb").read()
    at, out = 24, []
    while at + 12 <= len(data):
        magic, length = struct.unpack_from("<II", data, at)
        if magic != 0x42574C53:
            break
        out.append((at, length))
        at += 12 + length
    return out


def test_nodes_killed_in_the_middle_of_cross_shard_group_commits_lose_nothing():
    # 8 shards on 3 nodes: every node leads some and follows the others, so each write batch
    # of its log holds entries of several groups when it is killed.
    c = Cluster(storage=3, ingesters=1, queriers=1, shards=8, storage_args=["--flush-max-age", "10s"]).start()
    try:
        querier = c.queriers[0]
        report = os.path.join(c.dir, "loadsim.json")
        load = start_loadsim(c.ingesters[0], querier, "load", 11, "45s", report)
        probe = Probe(c.ingesters[0], interval=0.05).start()
        for victim in c.storage:
            time.sleep(6)
            victim.kill9()
            time.sleep(3)
            victim.start(timeout=90)
            wait_until(lambda: caught_up(c, victim), 60, f"node {victim.node_id} catching up")
        summary = finish_loadsim(load, report)
        probe.stop()
        check_no_duplicates_and_all_probes(querier, probe, ["load"])
        assert count_spans(querier, "load") >= summary["spans_acknowledged"]
        # The shared log did group commits across groups: fewer syncs than appends.
        metrics = requests.get(c.storage[0].api + "/metrics", timeout=5).text
        appends = metric(metrics, "spindle_storage_wal_appends_total")
        syncs = metric(metrics, "spindle_storage_wal_syncs_total")
        assert 0 < syncs < appends, (syncs, appends)
    finally:
        c.stop()


def metric(text, name):
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in the metrics")


def kill_a_node_under_writes(c):
    """Starts a probe writing every 50 ms, then kills node 3 with SIGKILL; the probe and node."""
    probe = Probe(c.ingesters[0], interval=0.05).start()
    time.sleep(4)
    victim = c.storage[2]
    victim.kill9()
    return probe, victim


def test_a_log_cut_short_by_a_crash_is_cut_and_the_node_goes_on():
    c = Cluster(storage=3, ingesters=1, queriers=1).start()
    try:
        probe, victim = kill_a_node_under_writes(c)
        # A batch cut short: its header promises more than the file holds.
        with open(segments(victim)[-1], "ab") as f:
            f.write(struct.pack("<III", 0x42574C53, 4096, 0) + b"\x01" * 100)
        victim.start(timeout=90)
        assert "cutting a write batch cut short by a crash" in victim.read_log()
        wait_until(lambda: caught_up(c, victim), 60, "the node catching up")
        time.sleep(2)
        probe.stop()
        check_no_duplicates_and_all_probes(c.queriers[0], probe, ["probe"])
    finally:
        c.stop()


def test_a_log_damaged_in_the_middle_stops_the_node_naming_the_file_and_offset():
    c = Cluster(storage=3, ingesters=1, queriers=1).start()
    try:
        probe, victim = kill_a_node_under_writes(c)
        segment = segments(victim)[-1]
        batches = batch_offsets(segment)
        assert len(batches) > 3, batches
        # Flip a byte inside an early batch; later batches are intact.
        at, length = batches[1]
        with open(segment, "r+b") as f:
            f.seek(at + 12 + length // 2)
            byte = f.read(1)
            f.seek(at + 12 + length // 2)
            f.write(bytes([byte[0] ^ 0xFF]))
        before = os.path.getsize(segment)
        victim.start(wait=False)
        code = victim.proc.wait(timeout=60)
        assert code != 0, "a node with a damaged log must not start"
        log = victim.read_log()
        assert segment in log and f"offset {at}" in log, log[-2000:]
        # Nothing was cut away: every group's entries are still there for an operator.
        assert os.path.getsize(segment) == before
        # Repaired (here: the byte put back), the node starts and catches up.
        with open(segment, "r+b") as f:
            f.seek(at + 12 + length // 2)
            f.write(byte)
        victim.start(timeout=90)
        wait_until(lambda: caught_up(c, victim), 60, "the repaired node catching up")
        probe.stop()
        check_no_duplicates_and_all_probes(c.queriers[0], probe, ["probe"])
        assert duplicates(c.queriers[0], "probe") == 0
    finally:
        c.stop()


def leaders_per_node(c):
    counts = {}
    for n in c.live_storage():
        counts[n.node_id] = sum(1 for s in n.status()["shards"] if s["role"] == "Leader")
    return counts


def test_leadership_comes_back_to_a_restarted_node():
    """After a restart a node leads nothing; within a few hand-overs it leads its share again
    (each shard's preferred replica), while writes go on and nothing acknowledged is lost."""
    c = Cluster(storage=3, ingesters=1, queriers=1, shards=8).start()
    try:
        wait_until(lambda: min(leaders_per_node(c).values()) >= 2, 60, "leaders spread at bootstrap")
        probe = Probe(c.ingesters[0], interval=0.1).start()
        victim = max(c.storage, key=lambda n: leaders_per_node(c)[n.node_id])
        victim.kill9()
        time.sleep(5)
        victim.start(timeout=90)
        wait_until(lambda: leaders_per_node(c)[victim.node_id] >= 2 and min(leaders_per_node(c).values()) >= 2, 90,
                   "leadership coming back to the restarted node")
        print("leaders per node after the restart:", leaders_per_node(c))
        time.sleep(2)
        probe.stop()
        check_no_duplicates_and_all_probes(c.queriers[0], probe, ["probe"])
    finally:
        c.stop()
