"""`check_webshart.py --hub`: a Hub dataset indexed, exported and read back through the real webshart
0.6.0, with every byte on loopback.

webshart's Hub address is written into it: discovery asks `https://huggingface.co/api/datasets/
REPO` (src/discovery.rs), shards are read from `https://huggingface.co/datasets/REPO/resolve/main/
PATH` (src/discovery.rs, src/metadata_resolver.rs), and HF_ENDPOINT only decides whether such a URL
goes through its Xet client (src/xet.rs: only when the URL's origin is HF_ENDPOINT's). So no setting
points it at a stand-in. This check runs in a network namespace of its own instead (`unshare --net
--mount`: no interface but lo, so nothing can leave the machine, and a mount namespace of its own),
where huggingface.co resolves to 127.0.0.1 (a hosts file bound over /etc/hosts inside that mount
namespace only) and the Hub stand-in of tests/servers.py answers HTTPS on 127.0.0.1:443 with a
certificate for huggingface.co signed by a CA made for the run, which webshart trusts through
SSL_CERT_FILE. huggingface_hub (`indexer index hf://...`) talks to the same stand-in over plain HTTP,
through HF_ENDPOINT. It needs root (unshare, mount, port 443) and openssl.

In the namespace: two DALLE-3-like shards at data/train/ in the repo org/dalle3 (and one at
elsewhere/, outside the indexed folder), `indexer index hf://datasets/org/dalle3/data`, `export
webshart --metadata DIR`, `export config --backend webshart`; then webshart is given the entry's
source, subfolder and metadata as SimpleTuner 4.10.1 gives them, and every sample and file it reads
is compared with the tar's bytes: once as SimpleTuner reads (metadata cache and shard cache on,
captions through caption_key), once by range with HF_ENDPOINT pointing at the stand-in's plain
address. A shard is then changed on the Hub, indexed and exported again: read through the same
caches every sample must come right, while the new index read through a copy of the shard cache
taken before the export (the old tar) must give wrong bytes. Controls: the repo given as an hf://
URL, and the indexes laid out under the indexed folder instead of at their paths in the repo, must
both fail.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from check_webshart import DEMO_SAMPLES, ROOT, dalle3_shard, run_child

sys.path.insert(0, str(ROOT / "tests"))  # the Hub stand-in the tests use

REPO = "org/dalle3"
ROOT_URL = f"hf://datasets/{REPO}/data"
TOKEN = "hf_not_a_real_token_0123456789"  # must reach neither the config nor the database


def run_isolated(venv: Path) -> int:
    """Run the check in a namespace of its own (see the module's docstring); its exit code."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("openssl"):
        print("--hub needs root, unshare and openssl: webshart's Hub address cannot be moved, so the "
              "check moves huggingface.co to 127.0.0.1 inside a network namespace of its own")
        return 2
    command = ["unshare", "--net", "--mount", "--", sys.executable, str(Path(__file__).with_name(
        "check_webshart.py")), "--hub", "--isolated", "--venv", str(venv)]
    return subprocess.run(command).returncode


def isolated_check(interpreter: Path) -> int:
    """The check itself, inside the namespace."""
    from servers import hub_server

    with tempfile.TemporaryDirectory(prefix="webshart-hub-") as folder:
        work = Path(folder)
        isolate(work)
        cert, key, ca = certificates(work)
        repo = work / "repo"
        for number in range(2):
            dalle3_shard(repo / "data" / "train" / f"data-{number:06d}.tar",
                         [f"{number}{key:04d}" for key in range(DEMO_SAMPLES)])
        dalle3_shard(repo / "elsewhere" / "data-000009.tar", ["9x"])
        with hub_server(REPO, repo) as (endpoint, plain_seen), \
                hub_server(REPO, repo, tls=(cert, key), port=443) as (_hub, seen):
            hub = HubRun(interpreter, work, repo, endpoint, ca, seen, plain_seen)
            problems = hub.check()
    for problem in problems:
        print(f"HUB PATH: {problem}")
    print(f"hub: {'every check held' if not problems else f'{len(problems)} problems'}")
    return 1 if problems else 0


def isolate(work: Path) -> None:
    """Loopback up, nothing else; huggingface.co is 127.0.0.1 in this mount namespace."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    interfaces = sorted(name for _index, name in socket.if_nameindex())
    if interfaces != ["lo"]:
        raise SystemExit(f"error: the namespace has interfaces {interfaces}, not lo alone: stopping")
    hosts = work / "hosts"
    hosts.write_text("127.0.0.1 localhost\n127.0.0.1 huggingface.co\n")
    subprocess.run(["mount", "--bind", str(hosts), "/etc/hosts"], check=True)
    print(f"network namespace: interfaces {interfaces}; huggingface.co is "
          f"{socket.gethostbyname('huggingface.co')} here")


def certificates(work: Path) -> tuple[Path, Path, Path]:
    """(cert, key) for huggingface.co signed by a CA made now, and that CA's certificate."""
    ca_key, ca, key, request, cert = (work / name for name in ("ca.key", "ca.pem", "hub.key", "hub.csr",
                                                              "hub.pem"))
    extensions = work / "hub.ext"
    extensions.write_text("subjectAltName=DNS:huggingface.co\nbasicConstraints=CA:FALSE\n"
                          "extendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n")
    for command in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "1",
         "-subj", "/CN=indexer webshart check CA", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", request,
         "-subj", "/CN=huggingface.co"],
        ["x509", "-req", "-in", request, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
         "-days", "1", "-extfile", extensions],
    ):
        subprocess.run(["openssl", *map(str, command)], check=True, capture_output=True)
    return cert, key, ca


class HubRun:
    """One repo on the stand-in: the indexer's commands, webshart's reads, what each saw."""

    def __init__(self, interpreter: Path, work: Path, repo: Path, endpoint: str, ca: Path,
                 seen: list[str], plain_seen: list[str]) -> None:
        self.interpreter, self.work, self.repo, self.seen, self.plain_seen = (
            interpreter, work, repo, seen, plain_seen)
        self.db, self.meta, self.config = work / "hub.sqlite", work / "meta", work / "multidatabackend.json"
        self.meta.mkdir()
        self.indexer_env = {**clean_env(), "HF_ENDPOINT": endpoint, "HF_TOKEN": TOKEN,
                            "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONPATH": str(ROOT)}
        self.webshart_env = {**clean_env(), "SSL_CERT_FILE": str(ca), "HF_TOKEN": TOKEN}
        self.endpoint = endpoint

    def indexer(self, *args: object) -> dict:
        done = subprocess.run([sys.executable, "-m", "indexer", *map(str, args), "--json"],
                              env=self.indexer_env, capture_output=True, text=True, cwd=self.work)
        if done.returncode:
            raise SystemExit(f"error: indexer {' '.join(map(str, args))}: exit {done.returncode}\n"
                             f"{done.stderr}")
        return json.loads(done.stdout)

    def read(self, entry: dict, *, simpletuner: bool, cache_dir: Path | None = None,
             env: dict | None = None, metadata: str | None = None, source: str | None = None,
             captions: bool = True) -> tuple[int, dict]:
        """webshart reads the entry's dataset (its caches under cache_dir when simpletuner, and the
        captions through caption_key unless told not to)."""
        cache_dir = cache_dir or Path(entry["webshart"]["cache_dir"])
        return run_child(self.interpreter, source or entry["source"], metadata or entry["metadata"],
                         quiet=True, cache=cache_dir / "metadata_cache" if simpletuner else None,
                         caption_key="short_caption" if simpletuner and captions else None,
                         subfolder=entry.get("subfolder"), local_copy=self.repo, cwd=self.work,
                         shard_cache=cache_dir / "shard_cache" if simpletuner else None,
                         env=env or self.webshart_env)

    def check(self) -> list[str]:
        indexed = self.indexer("index", ROOT_URL, "--db", self.db)
        print(f"indexer index {ROOT_URL}: {indexed['samples']} samples in {indexed['shards']['read']} "
              f"shards, {indexed['shards']['requests']} range requests")
        exported = self.indexer("export", "webshart", "--metadata", self.meta, "--db", self.db)
        print(f"export webshart --metadata: {exported['rows']} samples; indexes at "
              f"{', '.join(sorted(str(p.relative_to(self.meta)) for p in self.meta.rglob('*.json')))}")
        config = self.indexer("export", "config", self.config, "--backend", "webshart", "--db", self.db)
        entry = config["entry"]
        print(f"export config --backend webshart: source {entry['source']!r}, subfolder "
              f"{entry.get('subfolder')!r}, metadata {entry['metadata']!r}")
        stored = (("the config", self.config.read_bytes()), ("the database", self.db.read_bytes()))
        problems = [f"the token reached {where}" for where, data in stored if TOKEN.encode() in data]
        problems += self.first_reads(entry, indexed["samples"])
        problems += self.changed_shard(entry)
        problems += self.controls(entry)
        return problems

    def first_reads(self, entry: dict, samples: int) -> list[str]:
        before = len(self.seen)
        code, report = self.read(entry, simpletuner=True)
        problems = outcome("as SimpleTuner reads (metadata cache, shard cache, caption_key)", code, report,
                           samples, self.seen[before:])
        before, plain = len(self.seen), len(self.plain_seen)
        env = {**self.webshart_env, "HF_ENDPOINT": self.endpoint}
        code, report = self.read(entry, simpletuner=False, env=env)
        problems += outcome(f"by range, HF_ENDPOINT={self.endpoint}", code, report, samples,
                            self.seen[before:])
        print(f"  requests to HF_ENDPOINT ({self.endpoint}) meanwhile: {len(self.plain_seen) - plain} "
              "(webshart's Hub address is its own)")
        if len(self.plain_seen) != plain:
            problems.append("webshart sent requests to HF_ENDPOINT: its Hub address can be moved after all")
        return problems

    def changed_shard(self, entry: dict) -> list[str]:
        """A shard replaced on the Hub: the export clears what the caches hold of it."""
        cache_dir = Path(entry["webshart"]["cache_dir"])
        stale = self.work / "stale-cache"  # the shard cache alone: the new index is read, from the old tar
        shutil.copytree(cache_dir / "shard_cache", stale / "shard_cache")
        keys = [f"0a{n:03d}" for n in range(DEMO_SAMPLES // 2)] + [f"0{n:04d}" for n in range(DEMO_SAMPLES)]
        dalle3_shard(self.repo / "data" / "train" / "data-000000.tar", keys)  # every offset moves
        indexed = self.indexer("index", ROOT_URL, "--db", self.db)
        summary = self.indexer("export", "webshart", "--metadata", self.meta, "--db", self.db)
        print(f"data/train/data-000000.tar replaced on the Hub: index read {indexed['shards']['read']} "
              f"shard, export webshart wrote {summary['written']} index, removed {summary['cleared']}")
        stale_code, old = self.read(entry, simpletuner=True, cache_dir=stale, captions=False)
        wrong = sum(not row["ok"] for shard in old.get("shards", []) for row in shard["samples"])
        print("  control: the new index through a copy of the shard cache taken before the export: "
              + (f"{wrong} samples read wrong bytes" if old.get("shards") else
                 f"exit {stale_code}, {last_error(old)}"))
        code, report = self.read(entry, simpletuner=True)
        problems = outcome("after the export, same caches", code, report, indexed["samples"], [])
        if not wrong and not stale_code:
            problems.append("a stale shard cache no longer gives wrong bytes: the control failed")
        if summary["cleared"].get("shard_downloads") != 1:
            problems.append(f"the export removed {summary['cleared']} (expected the shard's cached copy)")
        return problems

    def controls(self, entry: dict) -> list[str]:
        """What the entry must not be: the repo as an hf:// URL, the indexes under the folder."""
        code, report = self.read(entry, simpletuner=False, source=ROOT_URL)
        print(f"  control: source {ROOT_URL!r}: exit {code}, {last_error(report)}")
        flat = self.work / "flat"
        shutil.copytree(self.meta / "data", flat)
        flat_code, flat_report = self.read(entry, simpletuner=False, metadata=str(flat))
        print(f"  control: indexes at their paths under the indexed folder ({flat}/train/...): exit "
              f"{flat_code}, {last_error(flat_report)}")
        return ([f"source {ROOT_URL} was read"] if code == 0 else []) + (
            ["indexes under the indexed folder were read"] if flat_code == 0 else [])


def outcome(label: str, code: int, report: dict, samples: int, requests: list[str]) -> list[str]:
    """Print what webshart read and the requests it made; the problems found."""
    rows = [row for shard in report.get("shards", []) for row in shard["samples"]]
    captions = sum(row.get("caption_key") == f"short caption of {row['path'][:-4]}" for row in rows)
    files = sum(shard.get("files_checked", 0) for shard in report.get("shards", []))
    print(f"webshart {label}: {len(report.get('shards', []))} shards, {len(rows)} samples and {files} files "
          f"compared, {report.get('mismatches')} mismatches"
          + (f", caption_key found {captions}" if captions else ""))
    if requests:
        print("  its requests to huggingface.co (the stand-in): " + ", ".join(
            f"{count} {kind}" for kind, count in collections.Counter(map(request_kind, requests)).items()))
    problems = [f"{label}: exit {code}: {last_error(report)}"] if code else []
    if report.get("mismatches") or len(rows) != samples or len(report.get("shards", [])) != 2:
        problems.append(f"{label}: {report.get('mismatches')} mismatches, {len(rows)} of {samples} samples")
    return problems


def request_kind(line: str) -> str:
    method, path, ranged = [*line.split(" ", 2), "", ""][:3]
    if path.startswith("/api/datasets/"):
        return f"{method} repo info"
    if ranged.strip():
        return f"{method} range"
    return f"{method} whole file" if method == "GET" else f"{method} (Xet probe)"


def last_error(report: dict) -> str:
    lines = [line for line in (report.get("stderr") or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no error"


def clean_env() -> dict[str, str]:
    """This environment without Hub settings or proxies."""
    return {name: value for name, value in os.environ.items()
            if not name.startswith("HF_") and "proxy" not in name.lower() and name != "SSL_CERT_FILE"}
