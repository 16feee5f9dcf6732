"""The library against a real Redis Cluster: configuration, the writer across nodes, the hub's
shard-channel notifications, and the faults a cluster adds (NOSCRIPT on one node, one node's
replies lost, a pubsub connection cut, a slot moving to another node mid-run)."""

import asyncio
import signal
import threading
import time
import uuid

import pytest
import redis
import redis.asyncio.cluster as acluster
import redis.cluster

from streaming import ReaderHub, StreamWriter, Terminal, mark_pending, read_events
from streaming.client import async_client, server_url, sync_client
from streaming.control import alist_runs, asweep, list_runs, sweep
from streaming.errors import ConfigurationError
from streaming.settings import Settings
from streaming.wire import RUN_INDEX, RunKeys
from tests.proxy import Proxy
from worker.config import WorkerConfig

# -- helpers ------------------------------------------------------------------------------------


def keys_of(run_id):
    return RunKeys.for_run(run_id, hash_tag=True)


def node_index(cluster, redis_client, run_id):
    """Which of the cluster's servers holds the run (by its slot)."""
    port = int(redis_client.get_node_from_key(keys_of(run_id).stream).port)
    return [server.port for server in cluster.servers].index(port)


def run_on(cluster, redis_client, index, prefix="run"):
    """A fresh run id whose keys live on server ``index``."""
    while True:
        run_id = f"{prefix}-{uuid.uuid4().hex}"
        if node_index(cluster, redis_client, run_id) == index:
            return run_id


def stored(redis_client, run_id):
    return [(int(f["seq_id"]), f["data"]) for _, f in redis_client.xrange(keys_of(run_id).stream)]


def write(run, start, count, pause=0.0):
    for i in range(start, start + count):
        run.send(str(i))
        if pause:
            time.sleep(pause)


async def collect(hub, run_id, after=None):
    return [event async for event in hub.read(run_id, starting_after=after)]


def commands_processed(admins):
    return sum(admin.info("stats")["total_commands_processed"] for admin in admins)


# -- configuration -------------------------------------------------------------------------------


def test_a_cluster_url_or_setting_selects_cluster_clients_and_hash_tags(cluster):
    by_scheme = Settings.from_env({"REDIS_URL": cluster.url})
    by_flag = Settings.from_env({"REDIS_URL": server_url(by_scheme), "STREAMING_CLUSTER": "1"})
    for settings in (by_scheme, by_flag):
        assert settings.cluster and settings.cluster_hash_tags
        assert isinstance(sync_client(settings), redis.cluster.RedisCluster)
        assert isinstance(async_client(settings), acluster.RedisCluster)
    assert server_url(by_scheme) == f"redis://127.0.0.1:{cluster.servers[0].port}"
    assert server_url(Settings(redis_url="rediss+cluster://u:p@h:1")) == "rediss://u:p@h:1"
    plain = Settings.from_env({"REDIS_URL": "redis://127.0.0.1:1/0"})
    assert not plain.cluster and not plain.cluster_hash_tags
    assert type(sync_client(plain)) is redis.Redis


def test_a_cluster_store_needs_its_own_broker_and_result_backend(cluster):
    with pytest.raises(ConfigurationError, match="CELERY_BROKER_URL is not set"):
        WorkerConfig.from_env({"REDIS_URL": cluster.url})
    with pytest.raises(ConfigurationError, match="CELERY_RESULT_BACKEND is not set"):
        WorkerConfig.from_env({"REDIS_URL": cluster.url,
                               "CELERY_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//"})
    config = WorkerConfig.from_env({"REDIS_URL": cluster.url,
                                    "CELERY_BROKER_URL": "redis://127.0.0.1:1/0",
                                    "CELERY_RESULT_BACKEND": "redis://127.0.0.1:2/0"})
    assert config.streaming.cluster and config.broker_url != config.result_backend


# -- the writer across nodes ---------------------------------------------------------------------


def test_runs_on_every_node_share_flushes_and_keep_their_order(cluster, writer, redis_client):
    run_ids = [run_on(cluster, redis_client, index % 3) for index in range(12)]
    for run_id in run_ids:
        key = keys_of(run_id)
        slots = {redis_client.keyslot(k) for k in (key.stream, key.meta, key.lease, key.notify)}
        assert len(slots) == 1
    runs = [writer.open(run_id) for run_id in run_ids]
    threads = [threading.Thread(target=write, args=(run, 0, 300)) for run in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for run in runs:
        run.finish()
    for run_id in run_ids:
        assert stored(redis_client, run_id) == [
            *((i + 1, f"data: {i}\n\n") for i in range(300)), (301, "data: [DONE]\n\n")]
    assert writer.stats().flushes < 12 * 301  # runs of different nodes went out together


def test_scripts_missing_on_the_nodes_are_loaded_again(cluster, settings, writer, redis_client):
    run_ids = [run_on(cluster, redis_client, index) for index in range(3)]
    runs = [writer.open(run_id) for run_id in run_ids]
    for run in runs:
        write(run, 0, 5)
        run.flush()
    for server in cluster.servers:  # e.g. a node restarted, or a failover to a fresh replica
        admin = cluster.client(server)
        admin.script_flush()
        admin.close()
    for run in runs:
        write(run, 5, 5)
        run.finish()
    for run_id in run_ids:
        assert [seq for seq, _ in stored(redis_client, run_id)] == list(range(1, 12))
    for server in cluster.servers:
        cluster.client(server).script_flush()

    async def read_all():  # the hub's STATUS script, missing too
        async with ReaderHub(settings) as hub:
            return [await collect(hub, run_id) for run_id in run_ids]

    assert all(len(events) == 11 for events in asyncio.run(read_all()))


def test_replies_lost_from_one_node_add_nothing_twice(cluster, settings, redis_client):
    """Connection errors to one node: its runs are sent again (the APPEND script drops what it
    already stored), the other nodes' runs are not held up."""
    proxy = Proxy(cluster.servers[1].port)
    remap = {("127.0.0.1", cluster.servers[1].port): ("127.0.0.1", proxy.port)}

    def through_proxy():
        return acluster.RedisCluster.from_url(
            server_url(settings), decode_responses=True,
            address_remap=lambda address: remap.get(address, address))

    writer = StreamWriter(settings, client_factory=through_proxy).start()
    # The run on node 2 is claimed first: redis-py sends a new client's first command to any
    # node and learns the slot from its MOVED reply, without the remap.
    run_ids = [run_on(cluster, redis_client, 2), run_on(cluster, redis_client, 1)]
    try:
        runs = [writer.open(run_id) for run_id in run_ids]
        for round_ in range(5):
            for run in runs:
                write(run, round_ * 20, 20)
            proxy.drop_replies(1)  # node 1's reply is lost after its scripts ran
            for run in runs:
                run.flush(timeout=20)
        for run in runs:
            run.finish(timeout=20)
        assert writer.stats().retries >= 1
    finally:
        writer.stop()
        proxy.close()
    for run_id in run_ids:
        assert stored(redis_client, run_id) == [
            *((i + 1, f"data: {i}\n\n") for i in range(100)), (101, "data: [DONE]\n\n")]


# -- the hub ------------------------------------------------------------------------------------


async def test_one_hub_follows_runs_on_every_node(cluster, settings, writer, redis_client):
    run_ids = [run_on(cluster, redis_client, index % 3) for index in range(9)]
    for run_id in run_ids:
        mark_pending(redis_client, run_id, settings)
    async with ReaderHub(settings) as hub:
        readers = [asyncio.create_task(collect(hub, run_id)) for run_id in run_ids for _ in (0, 1)]
        await asyncio.sleep(0.3)
        runs = [await writer.aopen(run_id) for run_id in run_ids]
        for i in range(40):
            for run in runs:
                run.send(str(i))
            await asyncio.sleep(0.002)
        for run in runs:
            await run.afinish()
        results = await asyncio.wait_for(asyncio.gather(*readers), 15)
        listeners = hub._shards[0].listeners
        assert len(listeners) == 3  # one pubsub connection per primary
        assert hub.stats()["readers"] == 0 and hub.stats()["followed"] == 0
    for events in results:
        assert [e.seq for e in events] == list(range(1, 42))
        assert [e.data for e in events[:-1]] == [str(i) for i in range(40)]


async def test_readers_joining_a_busy_run_get_every_chunk_once(cluster, settings, writer,
                                                               run_id):
    """Catch-up, then subscription, then one more read: nothing falls between the two."""
    run = await asyncio.to_thread(writer.open, run_id)
    async with ReaderHub(settings) as hub:
        producer = asyncio.create_task(asyncio.to_thread(write, run, 0, 600, 0.001))
        readers = []
        for _ in range(20):  # join at many points while it streams, at the newest chunk
            after = run.last_seq
            readers.append((after, asyncio.create_task(collect(hub, run_id, after))))
            await asyncio.sleep(0.02)
        await producer
        await run.afinish()
        for after, task in readers:
            events = await asyncio.wait_for(task, 15)
            assert [e.seq for e in events] == list(range(after + 1, 602))


async def test_idle_readers_cost_few_commands(cluster, settings, redis_client):
    quiet = settings.replace(liveness_interval=20, block_timeout=20)
    run_ids = [f"idle-{uuid.uuid4().hex}" for _ in range(200)]
    for run_id in run_ids:
        mark_pending(redis_client, run_id, quiet)
    async with ReaderHub(quiet) as hub:
        readers = [asyncio.create_task(collect(hub, run_id)) for run_id in run_ids]
        await asyncio.sleep(1.5)
        assert hub.stats()["followed"] == 200
        admins = [cluster.client(server) for server in cluster.servers]
        before = commands_processed(admins)
        await asyncio.sleep(3.0)
        spent = commands_processed(admins) - before - len(admins)  # our own INFO calls
        for task in readers:
            task.cancel()
    # 200 readers waiting 3 s: at the target of 0.1 command/s each that would be 60. Besides
    # a few, each primary's pubsub connection is pinged once per node_check_interval (the
    # hung-node check), whatever the number of readers.
    pings = len(cluster.servers) * (int(3.0 / quiet.node_check_interval) + 1)
    assert spent <= 5 + pings, spent


async def test_a_cut_pubsub_connection_is_subscribed_again(cluster, settings, writer,
                                                           redis_client):
    run_ids = [run_on(cluster, redis_client, index) for index in range(3)]
    runs = [await writer.aopen(run_id) for run_id in run_ids]
    async with ReaderHub(settings) as hub:
        readers = [asyncio.create_task(collect(hub, run_id)) for run_id in run_ids]
        for i in range(20):
            for run in runs:
                run.send(str(i))
        await asyncio.sleep(0.5)
        for server in cluster.servers:  # every node drops our pubsub connection
            admin = cluster.client(server)
            assert admin.client_kill_filter(_type="pubsub") >= 1
            admin.close()
        for i in range(20, 40):  # notifications sent while nobody listens are lost...
            for run in runs:
                run.send(str(i))
        for run in runs:
            await run.afinish()
        results = await asyncio.wait_for(asyncio.gather(*readers), 15)  # ...not the chunks
    for events in results:
        assert [e.seq for e in events] == list(range(1, 42))


# -- a slot moving to another node ----------------------------------------------------------------


def migrate_slot(cluster, slot, source, target):
    """Move ``slot`` from server ``source`` to server ``target``, keys included, the way
    ``valkey-cli --cluster reshard`` does it."""
    admins = [cluster.client(server) for server in cluster.servers]
    ids = [admin.execute_command("CLUSTER", "MYID") for admin in admins]
    admins[target].execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source])
    admins[source].execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target])
    while keys := admins[source].execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
        admins[source].execute_command("MIGRATE", "127.0.0.1", cluster.servers[target].port,
                                       "", 0, 5000, "KEYS", *keys)
    for index in (target, source, *(i for i in range(3) if i not in (source, target))):
        admins[index].execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[target])
    for admin in admins:
        admin.close()


async def test_a_run_whose_slot_moves_mid_stream_loses_nothing(cluster, settings, writer,
                                                                redis_client):
    while True:  # a slot no earlier test's keys share: the count below is the run's alone
        run_id = run_on(cluster, redis_client, 0, prefix="moving")
        slot = redis_client.keyslot(keys_of(run_id).stream)
        if not cluster.client(cluster.servers[0]).cluster("COUNTKEYSINSLOT", slot):
            break
    run = await asyncio.to_thread(writer.open, run_id)
    async with ReaderHub(settings) as hub:
        hub_reader = asyncio.create_task(collect(hub, run_id))
        producer = asyncio.create_task(asyncio.to_thread(write, run, 0, 300, 0.002))
        await asyncio.sleep(0.2)
        await asyncio.to_thread(migrate_slot, cluster, slot, 0, 2)
        await producer
        await run.afinish()
        events = await asyncio.wait_for(hub_reader, 20)
        listeners = hub._shards[0].listeners
        route = hub._shards[0].route
    in_slot = [cluster.client(server).execute_command("CLUSTER", "GETKEYSINSLOT", slot, 10)
               for server in cluster.servers]
    keys = keys_of(run_id)  # all moved; the lease ended with the run
    assert [sorted(names) for names in in_slot] == [[], [], sorted([keys.stream, keys.meta])]
    assert [e.seq for e in events] == list(range(1, 302))
    assert [e.data for e in events[:-1]] == [str(i) for i in range(300)]
    assert events[-1].terminal is Terminal.DONE
    assert stored(redis_client, run_id)[-1] == (301, "data: [DONE]\n\n")
    assert not route and set(listeners) >= {f"127.0.0.1:{cluster.servers[2].port}"}
    reader = sync_client(settings, reader=True)
    assert [e.seq for e in read_events(reader, run_id, settings, starting_after=150)] == list(
        range(151, 302))


# -- a node that stops answering ------------------------------------------------------------------


def wait_cluster_ok(cluster, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        states = []
        for server in cluster.servers:
            admin = cluster.client(server)
            states.append(admin.cluster("INFO")["cluster_state"])
            admin.close()
        if set(states) == {"ok"}:
            return
        assert time.monotonic() < deadline, states
        time.sleep(0.1)


@pytest.mark.fault
async def test_a_node_that_stops_answering_delays_runs_but_loses_nothing(cluster, settings,
                                                                         redis_client):
    """A primary paused past the cluster's node timeout: the cluster reports itself down, the
    writer keeps what it accepted, readers wait; once the node is back, each chunk arrives
    exactly once."""
    quick = settings.replace(socket_timeout=1.0, liveness_interval=0.5, producer_timeout=30)
    writer = StreamWriter(quick).start()
    run_ids = [run_on(cluster, redis_client, index, prefix="paused") for index in range(3)]
    paused = cluster.servers[1].process
    try:
        runs = [writer.open(run_id) for run_id in run_ids]
        async with ReaderHub(quick) as hub:
            readers = [asyncio.create_task(collect(hub, run_id)) for run_id in run_ids]
            producers = [asyncio.create_task(asyncio.to_thread(write, run, 0, 300, 0.01))
                         for run in runs]
            await asyncio.sleep(0.5)
            paused.send_signal(signal.SIGSTOP)
            await asyncio.sleep(3.0)  # longer than the 2 s node timeout
            paused.send_signal(signal.SIGCONT)
            await asyncio.gather(*producers)
            for run in runs:
                await asyncio.to_thread(run.finish, timeout=30)
            results = await asyncio.wait_for(asyncio.gather(*readers), 30)
        assert writer.stats().retries >= 1
    finally:
        paused.send_signal(signal.SIGCONT)
        writer.stop(timeout=5)
        wait_cluster_ok(cluster)
    for events in results:
        assert [e.seq for e in events] == list(range(1, 302))
        assert [e.data for e in events[:-1]] == [str(i) for i in range(300)]


# -- the run index and the sweep across nodes ---------------------------------------------------


def overdue_queued_runs(cluster, redis_client, settings, prefix):
    """One queued run per node, queued longer ago than the queue deadline."""
    runs = [run_on(cluster, redis_client, index, prefix) for index in range(3)]
    for run_id in runs:
        mark_pending(redis_client, run_id, settings)
        seconds, micros = redis_client.get_node_from_key(keys_of(run_id).meta).redis_connection \
            .time()
        long_ago = seconds * 1000 + micros // 1000 - int(settings.queue_timeout * 1000) - 1000
        redis_client.hset(keys_of(run_id).meta, "queued", long_ago)
    return runs


async def test_the_sweep_ends_overdue_runs_on_every_node(cluster, settings, redis_client):
    """The index lives in its own slot; each run's ending is its own guarded script."""
    runs = overdue_queued_runs(cluster, redis_client, settings, "swept")
    listed = dict(list_runs(redis_client, settings, limit=100_000))
    assert all(listed[r].state == "pending" for r in runs)
    ended = sweep(redis_client, settings)
    assert {r: ended.get(r) for r in runs} == dict.fromkeys(runs, Terminal.TIMEOUT)
    assert [redis_client.zscore(RUN_INDEX, r) for r in runs] == [None] * 3
    events = list(read_events(sync_client(settings, reader=True), runs[0], settings))
    assert [e.seq for e in events] == [1] and events[0].terminal is Terminal.TIMEOUT

    more = overdue_queued_runs(cluster, redis_client, settings, "aswept")
    client = async_client(settings)
    try:
        ended = await asweep(client, settings)
        assert {r: ended.get(r) for r in more} == dict.fromkeys(more, Terminal.TIMEOUT)
        assert not [r for r, _ in await alist_runs(client, settings, limit=100_000) if r in more]
    finally:
        await client.aclose()
