"""A Flower federation on this machine: one SuperLink and SuperNodes as real processes on loopback.

Test tooling, kept out of the installed package: only `tests/test_flower.py` and
`scripts/deploy_smoke.py` (`make deploy-smoke`) use it, both from a source checkout (it copies the
checkout's `pyproject.toml` as the app config), and nothing a user runs (`fedquad ...`, the
ServerApp, the ClientApp) needs it: a real deployment starts `flower-superlink` /
`flower-supernode` itself (docs/deployment.md). pytest finds it because tests/ is on its path;
the smoke script puts tests/ on `sys.path`.

Every process is started in its own session and stopped by its PID (with the processes it
spawned, found by PID too), also when something fails: use it as a context manager. Flower state
stays in a private `FLWR_HOME` inside the work folder, and the app config is a copy of the
repository's `pyproject.toml`, because `flwr run` may rewrite the app config it is given.

TLS and SuperNode authentication use certificates and keys made here with `cryptography` (what
`openssl` and `ssh-keygen` make in docs/deployment.md): a CA, a server certificate for
127.0.0.1/localhost, and per node an EC P-384 key pair in OpenSSH format.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

CONNECTION = "fedquad-local"


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def repo_app_config() -> Path:
    """The repository's pyproject.toml (the Flower app config); needs a source checkout."""
    path = Path(__file__).resolve().parents[1] / "pyproject.toml"  # tests/.. = the checkout
    if not path.is_file() or "[tool.flwr.app]" not in path.read_text():
        raise FileNotFoundError(f"no Flower app config at {path}: run from a fedquad source checkout")
    return path


def write_app_dir(dest: str | os.PathLike, source: str | os.PathLike | None = None) -> Path:
    """A folder holding a copy of the app config, for `flwr run <folder>`."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source or repo_app_config(), dest / "pyproject.toml")
    return dest


def toml_value(value) -> str:
    """A Python value as a TOML literal for `--run-config` / `--node-config`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))


def config_arg(values: dict) -> str:
    return " ".join(f"{k}={toml_value(v)}" for k, v in values.items())


# -- certificates and keys ---------------------------------------------------------------------

def make_certificates(folder: str | os.PathLike) -> dict[str, Path]:
    """ca.crt, server.pem and server.key for a SuperLink on 127.0.0.1 / localhost."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedquad local CA")])
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .sign(ca_key, hashes.SHA256()))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = {"ca": folder / "ca.crt", "cert": folder / "server.pem", "key": folder / "server.key"}
    paths["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return paths


def make_node_keys(folder: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """(private, public) EC P-384 key pair of a SuperNode, OpenSSH format (as `ssh-keygen -t ecdsa -b 384`)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = folder / name, folder / f"{name}.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                          serialization.NoEncryption()))
    os.chmod(private, 0o600)
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH))
    return private, public


# -- processes ---------------------------------------------------------------------------------

@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path
    children: set[int] = field(default_factory=set)  # PIDs it spawned, as last seen

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class LocalFederation:
    """A SuperLink and SuperNodes on 127.0.0.1, and the `flwr` CLI pointed at them."""

    def __init__(self, workdir: str | os.PathLike, *, tls: bool = False, auth: bool = False,
                 port: int | None = None, extra_env: dict | None = None):
        if auth and not tls:
            raise ValueError("SuperNode authentication needs TLS")
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        self.tls, self.auth = tls, auth
        self.port = port or free_port()
        self.flwr_home = self.workdir / "flwr-home"
        self.flwr_home.mkdir(exist_ok=True)
        self.procs: list[Proc] = []
        self.certs = make_certificates(self.workdir / "certs") if tls else None
        bin_dir = str(Path(sys.executable).parent)
        self.bin_dir = bin_dir
        self.env = {**os.environ, "FLWR_HOME": str(self.flwr_home), "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
                    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "FLWR_DISABLE_UPDATE_CHECK": "1",
                    "FLWR_TELEMETRY_ENABLED": "0", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                    "PYTHONUNBUFFERED": "1", **(extra_env or {})}
        self._write_connection()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _write_connection(self) -> None:
        lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]",
                 f'address = "{self.address}"']
        lines.append(f'root-certificates = "{self.certs["ca"]}"' if self.tls else "insecure = true")
        (self.flwr_home / "config.toml").write_text("\n".join(lines) + "\n")

    def _spawn(self, name: str, argv: list[str]) -> Proc:
        log_path = self.workdir / "logs" / f"{name}.log"
        log = open(log_path, "ab")
        try:
            popen = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=self.env, cwd=self.workdir, start_new_session=True)
        finally:
            log.close()
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        return proc

    def _exe(self, name: str) -> str:
        path = Path(self.bin_dir) / name
        return str(path) if path.exists() else name

    def start_superlink(self, wait_s: float = 60.0) -> Proc:
        argv = [self._exe("flower-superlink"), "--host", "127.0.0.1", "--port", str(self.port),
                "--disable-runtime-dependency-installation"]
        if self.tls:
            argv += ["--ssl-ca-certfile", str(self.certs["ca"]), "--ssl-certfile", str(self.certs["cert"]),
                     "--ssl-keyfile", str(self.certs["key"])]
        else:
            argv.append("--insecure")
        if self.auth:
            argv.append("--enable-supernode-auth")
        proc = self._spawn("superlink", argv)
        self.wait_listening(proc, self.port, wait_s)
        return proc

    def wait_listening(self, proc: Proc, port: int, wait_s: float) -> None:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"{proc.name} did not listen on port {port} within {wait_s:.0f} s:\n{proc.log_tail()}")

    def start_supernode(self, name: str, node_config: dict, *, private_key: str | os.PathLike | None = None,
                        port: int | None = None, max_wait_s: float | None = None) -> Proc:
        """A SuperNode connected to this SuperLink, with `node_config` (fedquad keys: see fedquad.flower.node)."""
        argv = [self._exe("flower-supernode"), "--superlink", self.address, "--port", str(port or free_port()),
                "--node-config", config_arg(node_config)]
        argv += ["--root-certificates", str(self.certs["ca"])] if self.tls else ["--insecure"]
        if private_key is not None:
            argv += ["--auth-supernode-private-key", str(private_key)]
        if max_wait_s is not None:
            argv += ["--max-wait-time", str(max_wait_s)]
        return self._spawn(f"supernode-{name}", argv)

    def start_worker(self, name: str, socket_path: str | os.PathLike, wait_s: float = 120.0) -> Proc:
        """A node's long-lived worker (`python -m fedquad.flower.worker`), ready when its socket is."""
        socket_path = Path(socket_path)
        proc = self._spawn(f"worker-{name}", [sys.executable, "-m", "fedquad.flower.worker", "--socket",
                                               str(socket_path)])
        deadline = time.monotonic() + wait_s
        while not (socket_path.exists() and Path(str(socket_path) + ".key").exists()):
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{proc.name} made no socket within {wait_s:.0f} s:\n{proc.log_tail()}")
            time.sleep(0.2)
        return proc

    # -- the flwr CLI ----------------------------------------------------------------------------
    def flwr(self, *args: str, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([self._exe("flwr"), *args], env=self.env, cwd=self.workdir, capture_output=True,
                                text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise RuntimeError(f"flwr {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def register_node(self, public_key: str | os.PathLike) -> str:
        return self.flwr("supernode", "register", str(public_key), CONNECTION).stdout

    def online_nodes(self) -> list[dict]:
        out = self.flwr("supernode", "list", CONNECTION, "--format", "json").stdout
        data = json.loads(out[out.index("{"):])
        return [n for n in data.get("nodes", []) if str(n.get("status", "")).lower() == "online"]

    def run_app(self, app_dir: str | os.PathLike, run_config: dict) -> int:
        """Start the app in `app_dir` with run-config overrides; returns the run id."""
        args = ["run", str(app_dir), CONNECTION, "--format", "json"]
        if run_config:
            args += ["--run-config", config_arg(run_config)]
        out = self.flwr(*args).stdout
        return int(json.loads(out[out.index("{"):])["run-id"])

    def run_status(self, run_id: int) -> str:
        out = self.flwr("ls", CONNECTION, "--run-id", str(run_id), "--format", "json").stdout
        runs = json.loads(out[out.index("{"):]).get("runs", [])
        return runs[0]["status"] if runs else "unknown"

    def run_log(self, run_id: int) -> str:
        result = self.flwr("log", str(run_id), CONNECTION, "--show", check=False, timeout=60)
        return result.stdout + result.stderr

    def stop_run(self, run_id: int) -> None:
        self.flwr("stop", str(run_id), CONNECTION)

    def wait_run(self, run_id: int, timeout: float, poll_s: float = 2.0, on_poll=None) -> str:
        """Wait until the run finishes; returns Flower's final status (e.g. 'finished:completed')."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.run_status(run_id)
            if status.startswith("finished"):
                return status
            if on_poll is not None:
                on_poll()
            time.sleep(poll_s)
        raise TimeoutError(f"run {run_id} still {self.run_status(run_id)!r} after {timeout:.0f} s")

    # -- stopping --------------------------------------------------------------------------------
    def _remember_children(self) -> None:
        import psutil
        for proc in self.procs:
            try:
                proc.children |= {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}
            except psutil.Error:
                pass

    def kill(self, proc: Proc, sig: int = signal.SIGTERM, wait_s: float = 15.0) -> None:
        """Stop one process and what it spawned, by PID: `sig` first (SIGKILL: as if the device died),
        SIGKILL after `wait_s`."""
        import psutil
        self._remember_children()
        if proc.alive():
            try:
                os.kill(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.popen.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.popen.wait(timeout=10)
        for pid in sorted(proc.children):
            try:
                child = psutil.Process(pid)
                child.send_signal(sig)
                try:
                    child.wait(timeout=5)
                except psutil.TimeoutExpired:
                    child.kill()
            except psutil.Error:
                pass

    def stop(self) -> None:
        """Stop every process this federation started (SuperNodes first), by PID."""
        for proc in reversed(self.procs):
            try:
                self.kill(proc)
            except Exception as exc:  # keep stopping the others
                print(f"could not stop {proc.name} (pid {proc.pid}): {exc}", file=sys.stderr)

    def leftover_pids(self) -> list[int]:
        """PIDs started here (or spawned by them) that still run: empty after stop()."""
        import psutil
        pids = []
        for proc in self.procs:
            for pid in {proc.pid, *proc.children}:
                try:
                    p = psutil.Process(pid)
                    if p.status() != psutil.STATUS_ZOMBIE:
                        pids.append(pid)
                except psutil.Error:
                    pass
        return pids

    def __enter__(self) -> "LocalFederation":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
