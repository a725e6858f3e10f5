"""Starts the real aether-control binary once per run and hands out clients.

Driven by scripts/python-client-tests.sh, which sets:

  AETHER_CONTROL_BIN        the binary (default: <repo>/target/debug/aether-control)
  AETHER_CONTROL_PY_STUBS   generated Python stubs (default: generated here, in a temp dir)
  AETHER_CONTROL_PY_REDIS   a redis:// URL, or "off" for in-memory affinities
                            (default: AETHER_CONTROL_TEST_REDIS_URL, else
                            redis://127.0.0.1:6379/0 when it answers, else off)
  AETHER_CONTROL_PY_PIDFILE where to write the server's pid, so the script can
                            stop it even if pytest itself is killed
  AETHER_CONTROL_PY_LEFTOVERS where to write the Redis URL and key namespace
                            while keys may exist, so the script can delete them
                            if pytest is killed before its own cleanup

The server gets free loopback ports, a temp data dir with its SQLite file,
random service tokens (all scopes / read only), Aether's JWT test secret, and
on Redis a random key namespace that is deleted at the end.
"""

import atexit
import ctypes
import functools
import hashlib
import os
import pathlib
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import grpc
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]
PROTO_DIR = ROOT / "proto"
PROTOS = [
    "aether/control/v1/affinity.proto",
    "aether/control/v1/model_mapping.proto",
    "aether/control/v1/user.proto",
    "google/api/annotations.proto",
    "google/api/http.proto",
]

JWT_SECRET = "aether-compat-jwt-secret-0123456789abcdef"


def _generate_stubs():
    """Stubs from proto/ with grpcio-tools, unless the script made them."""
    given = os.environ.get("AETHER_CONTROL_PY_STUBS")
    if given:
        return pathlib.Path(given)
    from grpc_tools import protoc

    out = pathlib.Path(tempfile.mkdtemp(prefix="aether-control-stubs-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"-I{include}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            *PROTOS,
        ]
    )
    if code != 0:
        raise RuntimeError(f"protoc failed with {code}")
    return out


STUBS = _generate_stubs()
sys.path.insert(0, str(STUBS))

from aether.control.v1 import (  # noqa: E402
    affinity_pb2_grpc,
    model_mapping_pb2_grpc,
    user_pb2_grpc,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

import support  # noqa: E402
import world  # noqa: E402


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _binary():
    path = os.environ.get("AETHER_CONTROL_BIN") or str(ROOT / "target" / "debug" / "aether-control")
    if not os.access(path, os.X_OK):
        pytest.exit(
            f"aether-control binary not found at {path}: run scripts/python-client-tests.sh "
            "(it builds it) or set AETHER_CONTROL_BIN",
            returncode=2,
        )
    return path


@functools.lru_cache(maxsize=None)
def _redis_url():
    """The Redis to use, or None for in-memory affinities (decided once)."""
    choice = os.environ.get("AETHER_CONTROL_PY_REDIS") or os.environ.get("AETHER_CONTROL_TEST_REDIS_URL") or ""
    if choice.lower() == "off":
        return None
    url = choice or "redis://127.0.0.1:6379/0"
    if not url.startswith(("redis://", "rediss://")):
        pytest.exit(f"the Python client tests need a redis:// or rediss:// URL, not {url!r}", returncode=2)
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=2)
        client.ping()
        client.close()
    except redis.RedisError as error:
        if choice:  # asked for explicitly: a failure, not a fallback
            pytest.exit(f"Redis at {url} does not answer: {error}", returncode=2)
        return None
    return url


def pytest_report_header(config):
    url = _redis_url()
    where = f"Redis {url}, a throwaway key namespace" if url else "memory (no Redis answered)"
    return f"aether-control {_binary()}: SQLite in a temp dir, affinities in {where}"


def _die_with_parent():
    """Linux: the server gets SIGTERM if pytest dies without cleaning up."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _clean_env():
    """The caller's service variables must not leak into the server."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not (name.startswith("AETHER_CONTROL_") or name in (
            "REDIS_URL", "DATABASE_URL", "JWT_SECRET_KEY", "ENCRYPTION_KEY", "ENVIRONMENT"
        ))
    }
    env.setdefault("RUST_LOG", "info")
    return env


class Server:
    """The running binary and what the tests need to talk to it."""

    def __init__(self, binary, redis_url):
        self.binary = binary
        self.redis_url = redis_url
        self.tmp = pathlib.Path(tempfile.mkdtemp(prefix="aether-control-pytest-"))
        self.data_dir = self.tmp / "data"
        self.data_dir.mkdir()
        self.database = self.data_dir / "aether.db"
        self.log_path = self.tmp / "server.log"
        self.namespace = f"pytest_{secrets.token_hex(6)}:" if redis_url else ""
        self.tokens = {
            "all": "py-all-" + secrets.token_urlsafe(24),
            "read": "py-read-" + secrets.token_urlsafe(24),
        }
        self.process = None
        self.address = None
        self.final_log = ""

    @property
    def storage_type(self):
        return "redis" if self.redis_url else "memory"

    def _args(self, port):
        token_config = ",".join(
            [
                f"py:read+write+admin:{hashlib.sha256(self.tokens['all'].encode()).hexdigest()}",
                f"ro:read:{hashlib.sha256(self.tokens['read'].encode()).hexdigest()}",
            ]
        )
        args = [
            self.binary,
            "--listen", f"127.0.0.1:{port}",
            "--data-dir", str(self.data_dir),
            "--database-url", f"sqlite://{self.database}?mode=rwc",
            "--service-tokens", token_config,
            "--jwt-secret-key", JWT_SECRET,
            "--health-interval-ms", "200",
            "--shutdown-grace-seconds", "2",
        ]
        help_text = subprocess.run(
            [self.binary, "--help"], capture_output=True, text=True, timeout=30, env=_clean_env()
        ).stdout
        if "--http-listen" in help_text:
            args += ["--http-listen", "off"]
        if self.redis_url:
            args += ["--redis-url", self.redis_url, "--redis-namespace", self.namespace]
            leftovers = os.environ.get("AETHER_CONTROL_PY_LEFTOVERS")
            if leftovers:
                pathlib.Path(leftovers).write_text(f"{self.redis_url}\n{self.namespace}\n")
        return args

    def start(self):
        # A free port can be taken between probing and binding: retry.
        for _attempt in range(3):
            port = _free_port()
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(
                    self._args(port),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=_clean_env(),
                    preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
                )
            pidfile = os.environ.get("AETHER_CONTROL_PY_PIDFILE")
            if pidfile:
                pathlib.Path(pidfile).write_text(f"{self.process.pid}\n")
            self.address = f"127.0.0.1:{port}"
            if self._wait_serving(deadline=time.monotonic() + 30):
                return
            if self.process.poll() is None:
                break  # running but never SERVING: not a port clash
        raise RuntimeError(f"aether-control did not become SERVING; log:\n{self.log_tail()}")

    def _wait_serving(self, deadline):
        with grpc.insecure_channel(self.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    return False
                try:
                    reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return True
                except grpc.RpcError:
                    pass
                time.sleep(0.05)
        return False

    def log_tail(self, lines=60):
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            text = self.final_log
        return "\n".join(text.splitlines()[-lines:]) or "(no log)"

    def stop(self):
        """SIGTERM, as an orchestrator stops it; returns the drain problem, if any."""
        problem = None
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                code = self.process.wait(timeout=15)
                if code != 0:
                    problem = f"aether-control exited with {code} after SIGTERM"
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
                problem = "aether-control did not stop within 15 s of SIGTERM"
        if self.redis_url and self.namespace:
            import redis

            client = redis.Redis.from_url(self.redis_url, socket_timeout=5)
            keys = list(client.scan_iter(match=self.namespace + "*", count=500))
            for start in range(0, len(keys), 500):
                client.delete(*keys[start:start + 500])
            client.close()
            leftovers = os.environ.get("AETHER_CONTROL_PY_LEFTOVERS")
            if leftovers:
                pathlib.Path(leftovers).unlink(missing_ok=True)
        self.final_log = self.log_tail(lines=200)
        shutil.rmtree(self.tmp, ignore_errors=True)
        return problem


_SERVER = None


@pytest.fixture(scope="session")
def server():
    global _SERVER
    server = Server(_binary(), _redis_url())
    _SERVER = server
    try:
        server.start()
        world.seed(server.database)
        yield server
    finally:
        problem = server.stop()
    # Reported as an error at teardown: the drain on SIGTERM is part of the contract.
    assert problem is None, f"{problem}; log:\n{server.log_tail()}"


@pytest.fixture(scope="session")
def channel(server):
    with grpc.insecure_channel(server.address) as channel:
        yield channel


@pytest.fixture(scope="session")
def admin_channel(server, channel):
    """Every scope (read + write + admin)."""
    return support.authed(channel, server.tokens["all"])


@pytest.fixture(scope="session")
def reader_channel(server, channel):
    """Read scope only."""
    return support.authed(channel, server.tokens["read"])


@pytest.fixture(scope="session")
def anonymous_channel(channel):
    """No credential at all (but the default deadline)."""
    return support.authed(channel, None)


@pytest.fixture(scope="session")
def affinities(admin_channel):
    return affinity_pb2_grpc.AffinityServiceStub(admin_channel)


@pytest.fixture(scope="session")
def users(admin_channel):
    return user_pb2_grpc.UserServiceStub(admin_channel)


@pytest.fixture(scope="session")
def models(admin_channel):
    return model_mapping_pb2_grpc.ModelMappingServiceStub(admin_channel)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """On failure, show the end of the server's log (it is deleted after)."""
    if exitstatus not in (0, 5) and _SERVER is not None:
        terminalreporter.section("aether-control log (last lines)")
        terminalreporter.write_line(_SERVER.log_tail())
