#!/usr/bin/env python3
"""Checks of everything under deploy/, run by scripts/validate-deploy.sh.

Each check prints one line: `ok`, `FAIL`, or `NOT RUN` (its tool is not on
this machine; the fallback that ran instead is named). The exit code is 1 when
any check failed, and also when one did not run and --strict-tools is given.

Real tools where they exist (kubernetes-validate's Kubernetes JSON schemas,
check-jsonschema's compose-spec schema, promtool, kubectl kustomize, docker
compose), and consistency checks no schema knows about: every environment
variable is one that src/config.rs reads, ports agree between the Dockerfile,
compose and the manifests, the drain timings add up, every metric name in the
alerts and the dashboard is one the service exports.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
PROM = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "aether-control-dashboard.json"
COMPOSE = DEPLOY / "docker-compose.yml"
COMPOSE_ENV = DEPLOY / "compose.env.example"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

# Kubernetes versions the manifests are validated against: the oldest they
# support (preStop `sleep` is on by default from 1.30) and the newest schema.
K8S_MIN_VERSION = "1.30.0"

# Read by the process but not flags of src/config.rs.
EXTRA_ENV = {"RUST_LOG"}

GRPC_PORT = 50051
HTTP_PORT = 8080
DEFAULT_SHUTDOWN_GRACE = 20
DEFAULT_REQUEST_TIMEOUT_MS = 30_000

try:
    import yaml
except ImportError:  # pragma: no cover - the shell script provides it
    print("validate-deploy: PyYAML is not importable by", sys.executable, file=sys.stderr)
    sys.exit(2)


class Report:
    def __init__(self, strict_tools: bool) -> None:
        self.strict_tools = strict_tools
        self.passed = 0
        self.failed: list[str] = []
        self.skipped: list[str] = []
        self.notes: list[str] = []

    def section(self, title: str) -> None:
        print(f"\n== {title}")

    def ok(self, name: str, detail: str = "") -> None:
        self.passed += 1
        print(f"  ok       {name}" + (f": {detail}" if detail else ""))

    def fail(self, name: str, detail: str) -> None:
        self.failed.append(f"{name}: {detail}")
        print(f"  FAIL     {name}: {detail}")

    def not_run(self, name: str, detail: str) -> None:
        self.skipped.append(f"{name}: {detail}")
        print(f"  NOT RUN  {name}: {detail}")

    def note(self, text: str) -> None:
        self.notes.append(text)

    def check(self, name: str, condition: bool, ok_detail: str, fail_detail: str) -> bool:
        if condition:
            self.ok(name, ok_detail)
        else:
            self.fail(name, fail_detail)
        return condition


def run(cmd: list[str], cwd: Path | None = None, timeout: int = 120, env: dict | None = None):
    """Runs a command; returns (exit code, stdout + stderr)."""
    try:
        proc = subprocess.run(
            cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
        )
    except FileNotFoundError as error:
        return 127, str(error)
    except subprocess.TimeoutExpired:
        return 124, f"timed out after {timeout}s"
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def tail(text: str, lines: int = 12) -> str:
    kept = text.strip().splitlines()[-lines:]
    return "\n             ".join(kept)


def rel(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------
# Parsing


def load_yaml_files(report: Report) -> dict[Path, list]:
    report.section("YAML and JSON parse")
    docs: dict[Path, list] = {}
    files = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml") and p.is_file())
    bad = 0
    for path in files:
        try:
            with path.open() as handle:
                docs[path] = [d for d in yaml.safe_load_all(handle) if d is not None]
        except yaml.YAMLError as error:
            bad += 1
            report.fail(f"yaml {rel(path)}", str(error).replace("\n", " "))
    if not bad:
        report.ok("yaml", f"{len(files)} files parse (PyYAML {yaml.__version__})")
    for path in sorted(DEPLOY.rglob("*.json")):
        try:
            json.loads(path.read_text())
            report.ok(f"json {rel(path)}", "parses")
        except json.JSONDecodeError as error:
            report.fail(f"json {rel(path)}", str(error))
    return docs


def config_env_names(report: Report) -> set[str]:
    source = ROOT / "src" / "config.rs"
    names = set(re.findall(r'env\s*=\s*"([A-Z][A-Z0-9_]*)"', source.read_text()))
    if not names:
        report.fail("config env names", f"no `env = \"...\"` found in {rel(source)}")
    return names | EXTRA_ENV


def parse_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip().strip('"').strip("'")
    return values


def duration_seconds(text: str | int | None) -> float | None:
    if text is None:
        return None
    if isinstance(text, (int, float)):
        return float(text)
    total = 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", str(text))
    if not parts or "".join(n + u for n, u in parts) != str(text):
        return None
    for number, unit in parts:
        total += float(number) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}[unit]
    return total


def port_of(address: str) -> int | None:
    match = re.search(r":(\d+)$", address or "")
    return int(match.group(1)) if match else None


# --------------------------------------------------------------------------
# Dockerfile


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) with continuations joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        if current.strip():
            keyword, _, args = current.strip().partition(" ")
            instructions.append((keyword.upper(), args.strip()))
        current = ""
    return instructions


def dockerignore_patterns() -> list[tuple[bool, str]]:
    patterns = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line[1:] if negated else line
        pattern = os.path.normpath(pattern.strip("/")) if pattern.strip("/") else "."
        patterns.append((negated, pattern))
    return patterns


def glob_regex(pattern: str) -> re.Pattern:
    out = ""
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
            continue
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            continue
        out += {"*": "[^/]*", "?": "[^/]"}.get(char, re.escape(char))
        i += 1
    return re.compile(out + r"\Z")


def dockerignored(path: str, patterns: list[tuple[bool, str]]) -> bool:
    """Docker's rule: the last pattern matching the path or a parent wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negated, pattern in patterns:
        regex = glob_regex(pattern)
        if any(regex.match(candidate) for candidate in candidates):
            excluded = not negated
    return excluded


def tracked_files(under: str) -> list[str]:
    code, out = run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", under], cwd=ROOT)
    if code == 0:
        return [line for line in out.splitlines() if line and (ROOT / line).is_file()]
    base = ROOT / under
    if base.is_file():
        return [under]
    return [str(p.relative_to(ROOT)) for p in base.rglob("*") if p.is_file()]


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])


def check_dockerfile(report: Report, env_names: set[str]) -> dict:
    report.section("Dockerfile (deploy/Dockerfile, .dockerignore)")
    facts: dict = {"context_sources": []}
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    global_args: dict[str, str] = {}
    stages: list[dict] = []
    for keyword, args in instructions:
        if keyword == "ARG" and not stages:
            name, _, default = args.partition("=")
            global_args[name.strip()] = default.strip()
            continue
        if keyword == "FROM":
            match = re.match(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", args, re.IGNORECASE)
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: global_args.get(m.group(1) or m.group(2), ""), match.group(1))
            stages.append({"image": image, "name": match.group(2), "instructions": []})
            continue
        if stages:
            stages[-1]["instructions"].append((keyword, args))
    if not report.check("dockerfile/stages", len(stages) >= 2,
                        " -> ".join(s["image"] for s in stages),
                        f"expected a build stage and a runtime stage, found {len(stages)}"):
        return facts
    builder, runtime = stages[0], stages[-1]
    names = [s["name"] for s in stages]

    # Builder: the Rust image and toolchain version.
    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())
    needed = cargo.get("package", {}).get("rust-version", "0")
    match = re.match(r"rust:(\d+\.\d+(?:\.\d+)?)-slim-(\w+)$", builder["image"])
    if report.check("dockerfile/builder image", bool(match), builder["image"],
                    f"{builder['image']}: expected rust:<version>-slim-<debian>"):
        report.check("dockerfile/rust version", version_tuple(match.group(1)) >= version_tuple(needed),
                     f"{match.group(1)} >= rust-version {needed} (Cargo.toml)",
                     f"{match.group(1)} is older than rust-version {needed} in Cargo.toml")
        codename = match.group(2)
        debian = {"bullseye": "11", "bookworm": "12", "trixie": "13"}.get(codename)
        runtime_debian = re.search(r"debian(\d+)|debian:(\w+)", runtime["image"])
        runtime_version = None
        if runtime_debian:
            runtime_version = runtime_debian.group(1) or {"bullseye": "11", "bookworm": "12", "trixie": "13"}.get(
                (runtime_debian.group(2) or "").split("-")[0])
        report.check("dockerfile/glibc match", debian is not None and debian == runtime_version,
                     f"builder Debian {debian} ({codename}) = runtime Debian {runtime_version}",
                     f"builder Debian {debian} ({codename}) vs runtime {runtime['image']}: the binary's glibc may be newer than the runtime's")

    runs = " ".join(args for keyword, args in builder["instructions"] if keyword == "RUN")
    report.check("dockerfile/cargo build",
                 re.search(r"cargo build\b[^&;]*--release", runs) is not None and "--locked" in runs,
                 "cargo build --release --locked", "the builder must run `cargo build --release --locked`")
    report.check("dockerfile/cache mounts",
                 "--mount=type=cache" in runs and "/usr/local/cargo/registry" in runs,
                 "BuildKit cache mounts for the cargo registry and target dir",
                 "expected --mount=type=cache for /usr/local/cargo/registry")
    report.check("dockerfile/no protoc", "protobuf-compiler" not in runs and "protoc" not in runs,
                 "no protoc installed (protox in build.rs)", "protoc is installed although build.rs uses protox")

    # COPY sources: in the repository, and let through by .dockerignore.
    patterns = dockerignore_patterns()
    problems = []
    for stage in stages:
        for keyword, args in stage["instructions"]:
            if keyword not in ("COPY", "ADD"):
                continue
            tokens = [t for t in args.split() if not t.startswith("--")]
            flags = [t for t in args.split() if t.startswith("--")]
            source_stage = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
            if source_stage is not None:
                if source_stage not in names[: stages.index(stage)]:
                    problems.append(f"COPY --from={source_stage}: no earlier stage of that name")
                continue
            for source in tokens[:-1]:
                source = source.rstrip("/")
                facts["context_sources"].append(source)
                files = tracked_files(source)
                if not files:
                    problems.append(f"COPY {source}: not in the repository")
                    continue
                dropped = [f for f in files if dockerignored(f, patterns)]
                if dropped:
                    problems.append(f"COPY {source}: .dockerignore excludes {', '.join(dropped[:3])}")
    report.check("dockerfile/copy sources", not problems,
                 f"{', '.join(facts['context_sources'])} exist and pass .dockerignore",
                 "; ".join(problems))
    leaks = [f for f in tracked_files(".") if not dockerignored(f, patterns)
             and not any(f == s or f.startswith(s + "/") for s in facts["context_sources"])]
    report.check("dockerignore/allow-list", not leaks,
                 "the build context holds only what the Dockerfile copies",
                 f"sent to the daemon but never copied: {', '.join(leaks[:6])}")
    for needle in ("target/x", ".tools/x", "data/x", ".git/x", "migrations/target/x", "deploy/compose.env"):
        if not dockerignored(needle, patterns):
            report.fail("dockerignore/excludes", f"{needle.rsplit('/x', 1)[0]} would be sent to the daemon")
            break
    else:
        report.ok("dockerignore/excludes", "target/, .tools/, data/, .git/, deploy/ stay out of the context")

    # Runtime stage.
    rt = runtime["instructions"]
    users = [args for keyword, args in rt if keyword == "USER"]
    user = users[-1] if users else ""
    uid = user.split(":")[0]
    report.check("dockerfile/non-root", uid.isdigit() and int(uid) != 0,
                 f"USER {user} (numeric, so runAsNonRoot can verify it)",
                 f"the runtime stage must end with a numeric non-root USER, found {user or 'none'}")
    report.check("dockerfile/runtime image",
                 bool(re.match(r"gcr\.io/distroless/cc-debian\d+(:nonroot)?|debian:\w+-slim", runtime["image"])),
                 runtime["image"], f"{runtime['image']}: expected distroless cc or debian slim")
    exposed = {int(p.split("/")[0]) for keyword, args in rt if keyword == "EXPOSE" for p in args.split()}
    report.check("dockerfile/expose", {GRPC_PORT, HTTP_PORT} <= exposed, f"EXPOSE {sorted(exposed)}",
                 f"EXPOSE must include {GRPC_PORT} and {HTTP_PORT}, found {sorted(exposed)}")
    env: dict[str, str] = {}
    for keyword, args in rt:
        if keyword == "ENV":
            for key, value in re.findall(r'([A-Za-z_][A-Za-z0-9_]*)=("[^"]*"|\S+)', args):
                env[key] = value.strip('"')
    facts["env"] = env
    unknown = sorted(set(env) - env_names)
    report.check("dockerfile/env names", not unknown, f"{len(env)} ENV, all read by src/config.rs",
                 f"not read by the service: {', '.join(unknown)}")
    wanted = {"AETHER_CONTROL_LISTEN": f"0.0.0.0:{GRPC_PORT}", "AETHER_CONTROL_HTTP_LISTEN": f"0.0.0.0:{HTTP_PORT}",
              "AETHER_CONTROL_LOG_FORMAT": "json"}
    wrong = {k: env.get(k) for k, v in wanted.items() if env.get(k) != v}
    report.check("dockerfile/env values", not wrong, ", ".join(f"{k}={v}" for k, v in wanted.items()),
                 f"expected {wanted}, found {wrong}")
    entry = [args for keyword, args in rt if keyword == "ENTRYPOINT"]
    try:
        entry_list = json.loads(entry[-1]) if entry else None
    except json.JSONDecodeError:
        entry_list = None
    copied_to = [args.split()[-1] for keyword, args in rt if keyword == "COPY"]
    report.check("dockerfile/entrypoint",
                 isinstance(entry_list, list) and bool(entry_list) and entry_list[0] in copied_to,
                 f"exec form {entry_list}, a binary copied from the builder",
                 "ENTRYPOINT must be exec form (JSON) naming a file COPY'd into the runtime stage, so SIGTERM reaches the process")
    stops = [args for keyword, args in rt if keyword == "STOPSIGNAL"]
    report.check("dockerfile/stop signal", not stops or stops[-1] in ("SIGTERM", "15"),
                 "SIGTERM (starts the drain)", f"STOPSIGNAL {stops[-1] if stops else ''}: the drain starts on SIGTERM")
    data_dir = env.get("AETHER_CONTROL_DATA_DIR")
    owned = any(keyword == "COPY" and "--chown=" in args and args.split()[-1].rstrip("/") == (data_dir or "").rstrip("/")
                for keyword, args in rt)
    report.check("dockerfile/data dir", bool(data_dir) and owned, f"{data_dir} exists, owned by the runtime user",
                 "AETHER_CONTROL_DATA_DIR must be set and created (COPY --chown) for the runtime user")
    return facts


def check_build_context(report: Report, sources: list[str], skip_cargo: bool) -> None:
    report.section("Docker build context (what `docker build` would compile)")
    patterns = dockerignore_patterns()
    with tempfile.TemporaryDirectory(prefix="aether-control-context-") as tmp:
        stage = Path(tmp)
        for source in sources:
            for name in tracked_files(source):
                if dockerignored(name, patterns):
                    continue
                target = stage / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, target)
        # Targets cargo needs at manifest load: explicit ones and the members.
        missing = []
        manifests = [Path("Cargo.toml")]
        root_manifest = tomllib.loads((stage / "Cargo.toml").read_text()) if (stage / "Cargo.toml").exists() else {}
        for member in root_manifest.get("workspace", {}).get("members", []):
            if member != ".":
                manifests.append(Path(member) / "Cargo.toml")
        for manifest in manifests:
            if not (stage / manifest).exists():
                missing.append(str(manifest))
                continue
            data = tomllib.loads((stage / manifest).read_text())
            base = manifest.parent
            package = data.get("package", {}).get("name", "")
            defaults = {"bench": "benches/{}.rs", "test": "tests/{}.rs", "example": "examples/{}.rs", "bin": "src/bin/{}.rs"}
            for kind, default in defaults.items():
                for target in data.get(kind, []):
                    path = target.get("path")
                    if path is None:
                        path = "src/main.rs" if kind == "bin" and target.get("name") == package else default.format(target.get("name"))
                    if not (stage / base / path).exists():
                        missing.append(str(base / path))
            lib = data.get("lib")
            if lib and lib.get("path") and not (stage / base / lib["path"]).exists():
                missing.append(str(base / lib["path"]))
            build = data.get("package", {}).get("build", "build.rs")
            if (ROOT / base / build).exists() and not (stage / base / build).exists():
                missing.append(str(base / build))
        # Paths named in build.rs (the proto root and files).
        build_rs = ROOT / "build.rs"
        if build_rs.exists():
            literals = re.findall(r'"([^"\n{}]+)"', build_rs.read_text())
            dirs = [lit for lit in literals if (ROOT / lit).is_dir()]
            for lit in literals:
                for base in ["", *dirs]:
                    if (ROOT / base / lit).exists() and not (stage / base / lit).exists():
                        missing.append(str(Path(base) / lit))
        report.check("context/manifest targets", not missing,
                     f"workspace members, explicit targets and build.rs inputs are all in the context ({len(manifests)} manifests)",
                     f"missing from the build context: {', '.join(sorted(set(missing)))}")
        if skip_cargo:
            report.not_run("context/cargo --locked", "skipped (--no-cargo)")
            return
        if shutil.which("cargo") is None:
            report.not_run("context/cargo --locked", "cargo is not installed")
            return
        command = ["cargo", "metadata", "--locked", "--format-version", "1", "--manifest-path", str(stage / "Cargo.toml")]
        code, out = run(command + ["--offline"], timeout=120)
        if code != 0 and "--locked" not in out:
            code, out = run(command, timeout=120)
        if code == 0:
            report.ok("context/cargo --locked", "Cargo.lock resolves the staged context unchanged (the image's `--locked` build will not stop on it)")
        elif "--locked" in out or "lock file" in out:
            report.fail("context/cargo --locked", tail(out, 4))
        else:
            report.not_run("context/cargo --locked", "cargo could not resolve dependencies here: " + tail(out, 2))


# --------------------------------------------------------------------------
# Compose


def check_compose(report: Report, docs: dict, env_names: set[str]) -> dict:
    report.section("docker compose (deploy/docker-compose.yml, compose.env.example)")
    facts: dict = {}
    compose = (docs.get(COMPOSE) or [None])[0]
    if not isinstance(compose, dict):
        report.fail("compose", "no document")
        return facts
    # 1. The compose-spec JSON schema (the one docker compose validates with).
    try:
        import check_jsonschema  # noqa: F401

        code, out = run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(COMPOSE)])
        if code == 0:
            report.ok("compose/schema", "compose-spec JSON schema (check-jsonschema vendor.compose-spec)")
        else:
            report.fail("compose/schema", tail(out))
    except ImportError:
        report.not_run("compose/schema", "check-jsonschema is not installed; only the structural checks below ran")
    # 2. docker compose itself, when its plugin exists (no engine is needed).
    docker = shutil.which("docker")
    code, out = run([docker, "compose", "version"]) if docker else (127, "docker is not installed")
    if code == 0:
        code, out = run([docker, "compose", "-f", str(COMPOSE), "config", "--quiet"], cwd=DEPLOY)
        if code == 0:
            report.ok("compose/docker compose config", "the file and env files load")
        else:
            report.fail("compose/docker compose config", tail(out))
    else:
        report.not_run("compose/docker compose config",
                       "the docker compose plugin is not installed here (" + out.splitlines()[0][:80] + ")")

    services = compose.get("services", {})
    app = services.get("aether-control")
    if not report.check("compose/services", isinstance(app, dict) and {"redis", "postgres"} <= set(services),
                        ", ".join(services), "expected services aether-control, redis and postgres"):
        return facts
    images = {name: str(s.get("image", "")) for name, s in services.items()}
    report.check("compose/images", images.get("redis", "").startswith("redis:7") and images.get("postgres", "").startswith("postgres:15"),
                 f"redis {images.get('redis')}, postgres {images.get('postgres')}",
                 f"expected redis:7 and postgres:15, found {images}")
    build = app.get("build", {})
    context = (DEPLOY / build.get("context", ".")).resolve()
    dockerfile = context / build.get("dockerfile", "Dockerfile")
    report.check("compose/build", context == ROOT and dockerfile == DOCKERFILE,
                 f"context {rel(context) or '.'}, dockerfile {rel(dockerfile)}",
                 f"build must use the repository root and deploy/Dockerfile, found {context} / {dockerfile}")
    # depends_on: every dependency healthy first, and has a health check.
    depends = app.get("depends_on", {})
    bad = []
    for name in ("redis", "postgres"):
        condition = depends.get(name, {}).get("condition") if isinstance(depends, dict) else None
        if condition != "service_healthy":
            bad.append(f"{name}: condition {condition}")
        if not services.get(name, {}).get("healthcheck", {}).get("test"):
            bad.append(f"{name} has no healthcheck")
    report.check("compose/depends_on", not bad, "redis and postgres: service_healthy, both with health checks", "; ".join(bad))
    # env files: the example exists and is required; names are the service's.
    env_files = app.get("env_file", [])
    env_files = [env_files] if isinstance(env_files, (str, dict)) else env_files
    paths = [(e if isinstance(e, str) else e.get("path"), True if isinstance(e, str) else e.get("required", True)) for e in env_files]
    required_missing = [p for p, required in paths if required and not (DEPLOY / p).exists()]
    report.check("compose/env_file", any(DEPLOY / p == COMPOSE_ENV for p, _ in paths) and not required_missing,
                 ", ".join(f"{p}{'' if r else ' (optional)'}" for p, r in paths),
                 f"env_file must include compose.env.example; required but missing: {required_missing}")
    env = parse_env_file(COMPOSE_ENV)
    env.update({k: str(v) for k, v in (app.get("environment") or {}).items()} if isinstance(app.get("environment"), dict) else {})
    facts["env"] = env
    unknown = sorted(set(env) - env_names)
    report.check("compose/env names", not unknown, f"{len(env)} variables, all read by src/config.rs",
                 f"not read by the service: {', '.join(unknown)}")
    wanted = {"ENVIRONMENT": "development", "AETHER_CONTROL_DB_MIGRATE": "always"}
    wrong = {k: env.get(k) for k, v in wanted.items() if env.get(k) != v}
    report.check("compose/env values", not wrong and all(env.get(k) for k in ("JWT_SECRET_KEY", "ENCRYPTION_KEY")),
                 "ENVIRONMENT=development, AETHER_CONTROL_DB_MIGRATE=always, JWT_SECRET_KEY and ENCRYPTION_KEY set",
                 f"expected {wanted} and both secrets set, found {wrong}")
    pg = services["postgres"].get("environment", {})
    url = re.match(r"postgres(?:ql)?://([^:@/]+):([^@/]*)@([^:/]+)(?::(\d+))?/(\w+)", env.get("DATABASE_URL", ""))
    report.check("compose/DATABASE_URL",
                 bool(url) and url.group(1) == pg.get("POSTGRES_USER") and url.group(2) == pg.get("POSTGRES_PASSWORD")
                 and url.group(3) == "postgres" and url.group(5) == pg.get("POSTGRES_DB"),
                 "user, password, host and database match the postgres service",
                 f"{env.get('DATABASE_URL')!r} does not match the postgres service's POSTGRES_* settings")
    report.check("compose/REDIS_URL", re.match(r"redis://([^@/]*@)?redis(:6379)?(/\d+)?$", env.get("REDIS_URL", "")) is not None,
                 env.get("REDIS_URL", ""), f"{env.get('REDIS_URL')!r} should point at the redis service")
    listen = {"grpc": port_of(env.get("AETHER_CONTROL_LISTEN", f":{GRPC_PORT}")),
              "http": port_of(env.get("AETHER_CONTROL_HTTP_LISTEN", f":{HTTP_PORT}"))}
    published = []
    for entry in app.get("ports", []):
        parts = str(entry).split(":")
        published.append((parts[0] if len(parts) == 3 else "", int(parts[-1].split("/")[0])))
    report.check("compose/ports", {p for _, p in published} == set(listen.values()) and all(h == "127.0.0.1" for h, _ in published),
                 f"{', '.join(str(p) for _, p in published)} published on 127.0.0.1 only",
                 f"published {published}, listening on {listen}: publish both, on 127.0.0.1")
    grace = int(env.get("AETHER_CONTROL_SHUTDOWN_GRACE_SECONDS", DEFAULT_SHUTDOWN_GRACE))
    stop = duration_seconds(app.get("stop_grace_period", "10s"))
    report.check("compose/stop grace", stop is not None and stop > grace,
                 f"stop_grace_period {stop:.0f}s > drain grace {grace}s", f"stop_grace_period {stop} must exceed the drain grace {grace}s")
    report.check("compose/hardening", app.get("read_only") is True and "ALL" in (app.get("cap_drop") or []),
                 "read-only root, all capabilities dropped", "expected read_only: true and cap_drop: [ALL]")
    return facts


# --------------------------------------------------------------------------
# Kubernetes


NAMESPACED = {"ConfigMap", "Secret", "Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"}


def render_kustomization(report: Report, docs: dict, kustomization: dict) -> list[dict]:
    kubectl, kustomize = shutil.which("kubectl"), shutil.which("kustomize")
    if kubectl or kustomize:
        command = [kubectl, "kustomize", str(K8S)] if kubectl else [kustomize, "build", str(K8S)]
        code, out = run(command, timeout=60)
        if code == 0:
            rendered = [d for d in yaml.safe_load_all(out) if d]
            tool = "kubectl kustomize" if kubectl else "kustomize build"
            report.ok("k8s/kustomize build", f"{tool} deploy/k8s: {len(rendered)} resources")
            return rendered
        report.fail("k8s/kustomize build", tail(out))
        return []
    # No kustomize: the part of it these manifests use (namespace, images).
    rendered = []
    images = {i["name"]: i for i in kustomization.get("images", [])}
    for name in kustomization.get("resources", []):
        for doc in docs.get(K8S / name, []):
            doc = json.loads(json.dumps(doc))
            if doc.get("kind") in NAMESPACED and kustomization.get("namespace"):
                doc["metadata"]["namespace"] = kustomization["namespace"]
            for container in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                base = container["image"].split(":")[0]
                if base in images:
                    container["image"] = f"{images[base].get('newName', base)}:{images[base].get('newTag', 'latest')}"
            rendered.append(doc)
    report.not_run("k8s/kustomize build", "neither kubectl nor kustomize is installed; rendered by this script (namespace, images only)")
    return rendered


def check_k8s_schema(report: Report, resources: list[tuple[str, dict]]) -> None:
    try:
        import kubernetes_validate
        from kubernetes_validate import utils as kv_utils
    except ImportError:
        kubernetes_validate = None
    if kubernetes_validate is None:
        required = {
            "Namespace": [], "ConfigMap": [], "Secret": [],
            "Deployment": ["spec.selector", "spec.template.spec.containers"],
            "Service": ["spec.ports"], "PodDisruptionBudget": ["spec.selector"],
            "HorizontalPodAutoscaler": ["spec.scaleTargetRef", "spec.maxReplicas"],
        }
        problems = []
        for where, doc in resources:
            for field in ["apiVersion", "kind", "metadata.name", *required.get(doc.get("kind"), ["?"])]:
                value = doc
                for part in field.split("."):
                    value = value.get(part) if isinstance(value, dict) else None
                if value in (None, "", [], {}):
                    problems.append(f"{where} {doc.get('kind')}: {field} missing")
        if problems:
            report.fail("k8s/required fields", "; ".join(problems))
        else:
            report.ok("k8s/required fields", f"{len(resources)} resources (fallback: required fields per kind only)")
        report.not_run("k8s/schema", "kubernetes-validate is not installed (kubeconform is not obtainable here either); only required fields were checked")
        return
    latest = kubernetes_validate.latest_version()
    versions = [K8S_MIN_VERSION, latest if latest.count(".") == 2 else latest + ".0"]
    problems = []
    for version in versions:
        for where, doc in resources:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kv_utils.ValidationError as error:
                path = ".".join(str(p) for p in error.path)
                problems.append(f"{where} {doc.get('kind')}/{doc['metadata'].get('name')} (k8s {version}): {path}: {error.message}")
            except Exception as error:  # schema missing, unsupported version
                problems.append(f"{where} {doc.get('kind')} (k8s {version}): {getattr(error, 'message', error)}")
    if problems:
        report.fail("k8s/schema", "\n             ".join(problems))
    else:
        report.ok("k8s/schema", f"{len(resources)} resources valid against the Kubernetes {' and '.join(v.rsplit('.', 1)[0] for v in versions)} "
                                f"OpenAPI schemas, strict (unknown fields rejected; kubernetes-validate {kubernetes_validate.__version__})")


def labels_match(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_k8s(report: Report, docs: dict, env_names: set[str]) -> dict:
    report.section("Kubernetes (deploy/k8s)")
    facts: dict = {}
    kustomization = (docs.get(K8S / "kustomization.yaml") or [{}])[0]
    listed = kustomization.get("resources", [])
    files = sorted(p.name for p in K8S.glob("*.y*ml") if p.name != "kustomization.yaml")
    missing = [name for name in listed if not (K8S / name).exists()]
    unlisted = [name for name in files if name not in listed and name != "secret.example.yaml"]
    report.check("k8s/kustomization", not missing and not unlisted and "secret.example.yaml" not in listed,
                 f"{len(listed)} resources listed; secret.example.yaml left out on purpose",
                 f"missing files {missing}, unlisted manifests {unlisted}, or the secret template listed")
    rendered = render_kustomization(report, docs, kustomization)
    secret_docs = docs.get(K8S / "secret.example.yaml", [])
    check_k8s_schema(report, [("rendered", d) for d in rendered] + [("secret.example.yaml", d) for d in secret_docs])

    by_kind: dict[str, list[dict]] = {}
    for doc in rendered:
        by_kind.setdefault(doc.get("kind"), []).append(doc)
    deployments = by_kind.get("Deployment", [])
    if not report.check("k8s/deployment", len(deployments) == 1, deployments[0]["metadata"]["name"] if deployments else "",
                        f"expected one Deployment, found {len(deployments)}"):
        return facts
    deployment = deployments[0]
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    pod_labels = spec["template"]["metadata"].get("labels", {})
    containers = pod.get("containers", [])
    container = containers[0]
    config = {}
    for cm in by_kind.get("ConfigMap", []):
        config.update(cm.get("data", {}))
    secret = {}
    for doc in secret_docs:
        secret.update(doc.get("stringData", {}) or {})
        secret.update(doc.get("data", {}) or {})
    facts.update(config=config, deployment=deployment)

    # Environment: names the binary reads, secrets only as placeholders.
    unknown = sorted((set(config) | set(secret)) - env_names)
    report.check("k8s/env names", not unknown, f"{len(config)} ConfigMap + {len(secret)} Secret keys, all read by src/config.rs",
                 f"not read by the service: {', '.join(unknown)}")
    real_looking = [k for k, v in secret.items() if "REPLACE_ME" not in str(v)]
    report.check("k8s/secret template", bool(secret) and not real_looking,
                 "every value is a REPLACE_ME placeholder", f"values that are not placeholders: {real_looking}")
    if config.get("ENVIRONMENT") == "production":
        needed = {"DATABASE_URL", "REDIS_URL", "JWT_SECRET_KEY", "ENCRYPTION_KEY"} - set(secret) - set(config)
        report.check("k8s/production settings", not needed, "DATABASE_URL, REDIS_URL, JWT_SECRET_KEY, ENCRYPTION_KEY provided",
                     f"ENVIRONMENT=production requires {sorted(needed)}")
    refs = {("configMapRef", r["configMapRef"]["name"]) if "configMapRef" in r else ("secretRef", r["secretRef"]["name"])
            for r in container.get("envFrom", [])}
    names_cm = {c["metadata"]["name"] for c in by_kind.get("ConfigMap", [])}
    names_secret = {s["metadata"]["name"] for s in secret_docs}
    dangling = [n for kind, n in refs if (kind == "configMapRef" and n not in names_cm) or (kind == "secretRef" and n not in names_secret)]
    report.check("k8s/envFrom", not dangling and len(refs) == 2, ", ".join(f"{k} {n}" for k, n in sorted(refs)),
                 f"envFrom refers to unknown objects {dangling}")

    # Selectors and references.
    selector = spec.get("selector", {}).get("matchLabels", {})
    bad = [] if labels_match(selector, pod_labels) else ["Deployment selector"]
    for service in by_kind.get("Service", []):
        if not labels_match(service["spec"].get("selector", {}), pod_labels):
            bad.append(f"Service {service['metadata']['name']}")
    for pdb in by_kind.get("PodDisruptionBudget", []):
        if not labels_match(pdb["spec"].get("selector", {}).get("matchLabels", {}), pod_labels):
            bad.append(f"PDB {pdb['metadata']['name']}")
    for constraint in pod.get("topologySpreadConstraints", []):
        if not labels_match(constraint.get("labelSelector", {}).get("matchLabels", {}), pod_labels):
            bad.append(f"topology spread on {constraint.get('topologyKey')}")
    report.check("k8s/selectors", not bad, "Deployment, Services, PDB and topology spread select the pod labels",
                 f"selectors that miss the pods: {bad}")
    hpas = by_kind.get("HorizontalPodAutoscaler", [])
    hpa = hpas[0] if hpas else {}
    target = hpa.get("spec", {}).get("scaleTargetRef", {})
    metrics = hpa.get("spec", {}).get("metrics", [])
    requests = container.get("resources", {}).get("requests", {})
    limits = container.get("resources", {}).get("limits", {})
    min_replicas = hpa.get("spec", {}).get("minReplicas", 1)
    replicas = spec.get("replicas")
    report.check("k8s/hpa", hpa.get("apiVersion") == "autoscaling/v2" and target.get("kind") == "Deployment"
                 and target.get("name") == deployment["metadata"]["name"] and min_replicas >= 2
                 and any(m.get("resource", {}).get("name") == "cpu" for m in metrics) and "cpu" in requests
                 and (replicas is None or replicas >= 2),
                 f"autoscaling/v2 on CPU ({requests.get('cpu')} requested), {min_replicas}..{hpa.get('spec', {}).get('maxReplicas')} replicas"
                 + ("; the Deployment leaves replicas to it" if replicas is None else ""),
                 "the HPA must be autoscaling/v2, target the Deployment, scale on CPU with a CPU request, minReplicas >= 2")
    pdbs = by_kind.get("PodDisruptionBudget", [])
    pdb_spec = pdbs[0]["spec"] if pdbs else {}
    report.check("k8s/pdb", bool(pdbs) and (pdb_spec.get("maxUnavailable") == 1 or (pdb_spec.get("minAvailable") or 0) < min_replicas),
                 f"policy/v1, maxUnavailable {pdb_spec.get('maxUnavailable')} with at least {min_replicas} pods: drains proceed, one pod at a time",
                 "a PDB allowing one disruption at the HPA minimum is required (a budget of zero blocks node drains)")
    report.check("k8s/resources", {"cpu", "memory"} <= set(requests) and "memory" in limits,
                 f"requests {requests}, limits {limits}", "cpu and memory requests and a memory limit are required")

    # Security.
    psc, csc = pod.get("securityContext", {}), container.get("securityContext", {})
    insecure = []
    if not (psc.get("runAsNonRoot") or csc.get("runAsNonRoot")):
        insecure.append("runAsNonRoot")
    if (csc.get("runAsUser", psc.get("runAsUser")) or 0) == 0:
        insecure.append("runAsUser (non-zero)")
    if csc.get("readOnlyRootFilesystem") is not True:
        insecure.append("readOnlyRootFilesystem")
    if csc.get("allowPrivilegeEscalation") is not False:
        insecure.append("allowPrivilegeEscalation: false")
    if "ALL" not in csc.get("capabilities", {}).get("drop", []):
        insecure.append("capabilities.drop [ALL]")
    if psc.get("seccompProfile", {}).get("type") not in ("RuntimeDefault", "Localhost"):
        insecure.append("seccompProfile")
    report.check("k8s/security context", not insecure, "non-root, read-only root, no escalation, no capabilities, RuntimeDefault seccomp",
                 f"missing: {insecure}")
    mounts = {m["mountPath"].rstrip("/"): m["name"] for m in container.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    data_dir = config.get("AETHER_CONTROL_DATA_DIR", "data").rstrip("/")
    volume = volumes.get(mounts.get(data_dir, ""), {})
    report.check("k8s/data dir", data_dir.startswith("/") and "emptyDir" in volume,
                 f"AETHER_CONTROL_DATA_DIR {data_dir} is an emptyDir mount",
                 f"AETHER_CONTROL_DATA_DIR {data_dir!r} must be an absolute path mounted from an emptyDir (read-only root)")

    # Ports and probes.
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    listen = {"grpc": port_of(config.get("AETHER_CONTROL_LISTEN", "")), "http": port_of(config.get("AETHER_CONTROL_HTTP_LISTEN", ""))}
    report.check("k8s/ports", ports.get("grpc") == listen["grpc"] == GRPC_PORT and ports.get("http") == listen["http"] == HTTP_PORT,
                 f"grpc {ports.get('grpc')}, http {ports.get('http')} = the ConfigMap's listen addresses",
                 f"container ports {ports} vs listen addresses {listen}")
    bad_targets = []
    for service in by_kind.get("Service", []):
        for port in service["spec"].get("ports", []):
            target_port = port.get("targetPort", port.get("port"))
            if target_port not in ports and target_port not in ports.values():
                bad_targets.append(f"{service['metadata']['name']}:{port.get('name')}")
            if port.get("name") == "grpc" and port.get("appProtocol") not in ("kubernetes.io/h2c", "grpc"):
                bad_targets.append(f"{service['metadata']['name']}:grpc appProtocol")
    report.check("k8s/service ports", not bad_targets, "targetPorts name container ports; gRPC marked h2c",
                 f"problems: {bad_targets}")
    annotations = spec["template"]["metadata"].get("annotations", {})
    report.check("k8s/scrape annotations",
                 annotations.get("prometheus.io/scrape") == "true" and annotations.get("prometheus.io/port") == str(ports.get("http"))
                 and annotations.get("prometheus.io/path") == "/metrics",
                 f"prometheus.io/scrape on port {annotations.get('prometheus.io/port')} path {annotations.get('prometheus.io/path')}",
                 f"scrape annotations must name the http port and /metrics, found {annotations}")

    def port_ok(probe: dict) -> bool:
        for kind in ("httpGet", "tcpSocket"):
            if kind in probe:
                port = probe[kind].get("port")
                return port in ports or port in ports.values()
        if "grpc" in probe:
            return probe["grpc"].get("port") == ports.get("grpc")
        return False

    readiness, liveness, startup = (container.get(k, {}) for k in ("readinessProbe", "livenessProbe", "startupProbe"))
    report.check("k8s/readiness probe",
                 readiness.get("grpc", {}).get("port") == ports.get("grpc") and readiness.get("grpc", {}).get("service", "") == "",
                 f"gRPC health, service \"\", every {readiness.get('periodSeconds', 10)}s x{readiness.get('failureThreshold', 3)}",
                 "readiness must be the gRPC health check of the whole server (grpc.port = the grpc port, service \"\")")
    report.check("k8s/liveness probe",
                 bool(liveness) and port_ok(liveness) and "grpc" not in liveness,
                 "does not depend on Redis/PostgreSQL (" + ("httpGet " + liveness.get("httpGet", {}).get("path", "") if "httpGet" in liveness else "tcp") + ")",
                 "liveness must exist, hit a declared port, and not use gRPC health (which follows the stores: an outage would restart every pod)")
    report.check("k8s/startup probe", bool(startup) and port_ok(startup),
                 f"budget {startup.get('periodSeconds', 10) * startup.get('failureThreshold', 3)}s",
                 "a startupProbe on a declared port is required")
    facts.update(readiness=readiness, startup=startup, pod=pod, container=container, spec=spec)
    return facts


# --------------------------------------------------------------------------
# Drain arithmetic


def check_drain(report: Report, k8s: dict, compose: dict, dockerfile: dict) -> None:
    report.section("Graceful drain timings")
    if "pod" not in k8s:
        report.fail("drain", "no Deployment facts to check")
        return
    pod, container, spec, config = k8s["pod"], k8s["container"], k8s["spec"], k8s["config"]
    grace = int(config.get("AETHER_CONTROL_SHUTDOWN_GRACE_SECONDS", DEFAULT_SHUTDOWN_GRACE))
    request_ms = int(config.get("AETHER_CONTROL_REQUEST_TIMEOUT_MS", DEFAULT_REQUEST_TIMEOUT_MS))
    store_ms = int(config.get("AETHER_CONTROL_STORE_TIMEOUT_MS", 1000))
    pre_stop = container.get("lifecycle", {}).get("preStop", {})
    sleep = pre_stop.get("sleep", {}).get("seconds")
    if sleep is None and "exec" in pre_stop:
        match = re.search(r"sleep\D+(\d+)", " ".join(pre_stop["exec"].get("command", [])))
        sleep = int(match.group(1)) if match else None
    termination = pod.get("terminationGracePeriodSeconds", 30)
    report.check("drain/preStop", sleep is not None and sleep >= 5,
                 f"sleep {sleep}s before SIGTERM, while the endpoint removal propagates",
                 "a preStop sleep of at least 5 s is needed so no new connection reaches a pod that already stopped accepting")
    if sleep is None:
        return
    worst = sleep + grace + store_ms / 1000
    report.check("drain/termination grace", termination >= sleep + grace + 5,
                 f"preStop {sleep}s + drain <= {grace}s + last flush <= {store_ms / 1000:g}s = {worst:g}s <= terminationGracePeriodSeconds {termination}s",
                 f"terminationGracePeriodSeconds {termination} must be >= preStop {sleep} + AETHER_CONTROL_SHUTDOWN_GRACE_SECONDS {grace} + 5")
    report.check("drain/request timeout", request_ms <= grace * 1000,
                 f"every call ends within {request_ms / 1000:g}s, inside the {grace}s drain: none is cut off",
                 f"AETHER_CONTROL_REQUEST_TIMEOUT_MS {request_ms} exceeds the drain grace {grace}s: a slow call admitted before SIGTERM can be cut off when the grace expires")
    strategy = spec.get("strategy", {}).get("rollingUpdate", {})
    report.check("drain/rollout", str(strategy.get("maxUnavailable")) in ("0", "0%") and spec.get("minReadySeconds", 0) >= 1,
                 f"maxSurge {strategy.get('maxSurge')}, maxUnavailable 0, minReadySeconds {spec.get('minReadySeconds')}: "
                 "an old pod goes only after its replacement is Ready",
                 "rolling updates need maxUnavailable 0 and minReadySeconds so capacity never drops")
    liveness = container.get("livenessProbe", {})
    live_window = liveness.get("periodSeconds", 10) * liveness.get("failureThreshold", 3)
    report.check("drain/liveness during drain", live_window > grace,
                 f"liveness needs {live_window}s of failures, longer than the {grace}s drain (the HTTP listener closes at SIGTERM)",
                 f"liveness period x failureThreshold ({live_window}s) must exceed the drain grace ({grace}s): "
                 "/healthz stops answering at SIGTERM, and a liveness kill would cut the drain short")
    readiness = k8s["readiness"]
    unready = readiness.get("periodSeconds", 10) * readiness.get("failureThreshold", 3)
    report.check("drain/readiness after SIGTERM", unready <= sleep + grace,
                 f"NOT_SERVING reaches the EndpointSlice `serving` condition within {unready}s, inside the drain",
                 f"readiness period x failureThreshold ({unready}s) is longer than the whole drain")


# --------------------------------------------------------------------------
# Prometheus and Grafana


METRIC_RE = re.compile(r"\b((?:aether_control|rpc_server|cache_affinity)_[a-z0-9_]+)\b(?!\.)")
RECORDED_RE = re.compile(r"\b([a-z_]+:[a-z0-9_]+:[a-z0-9_]+)\b")


def exported_metrics() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "src").rglob("*.rs"):
        names.update(METRIC_RE.findall(path.read_text()))
    return names


def dashboard_exprs(dashboard: dict) -> list[tuple[str, str]]:
    out = []
    for panel in dashboard.get("panels", []):
        for sub in [panel, *panel.get("panels", [])]:
            for target in sub.get("targets", []):
                out.append((sub.get("title", "?"), target.get("expr", "")))
    return out


def grafana_to_promql(expr: str) -> str:
    replacements = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "${__range}": "1h"}
    for key, value in replacements.items():
        expr = expr.replace(key, value)
    return re.sub(r"\$\{?(\w+)\}?", "x", expr)


def check_rules_structure(report: Report, rules_doc: dict) -> list[dict]:
    problems, rules = [], []
    groups = rules_doc.get("groups") if isinstance(rules_doc, dict) else None
    if not isinstance(groups, list) or not groups:
        report.fail("prometheus/structure", "alerts.yml needs a non-empty `groups` list")
        return []
    seen = set()
    for group in groups:
        if group.get("name") in seen or not group.get("name"):
            problems.append(f"group name {group.get('name')!r} empty or repeated")
        seen.add(group.get("name"))
        for rule in group.get("rules", []):
            rules.append(rule)
            name = rule.get("alert") or rule.get("record")
            if ("alert" in rule) == ("record" in rule):
                problems.append(f"{name}: exactly one of alert/record")
            if not isinstance(rule.get("expr"), str) or not rule["expr"].strip():
                problems.append(f"{name}: expr")
            if rule["expr"].count("(") != rule["expr"].count(")"):
                problems.append(f"{name}: unbalanced parentheses")
            if "for" in rule and duration_seconds(rule["for"]) is None:
                problems.append(f"{name}: for {rule['for']!r}")
            for key in ("labels", "annotations"):
                if key in rule and not all(isinstance(v, str) for v in rule[key].values()):
                    problems.append(f"{name}: {key} values must be strings")
            if "alert" in rule:
                if rule.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
                    problems.append(f"{name}: severity label")
                if not {"summary", "description"} <= set(rule.get("annotations", {})):
                    problems.append(f"{name}: summary and description annotations")
            if "record" in rule and rule["record"].count(":") != 2:
                problems.append(f"{name}: recording rule names take the level:metric:operations form")
    report.check("prometheus/structure", not problems,
                 f"{len(groups)} groups, {sum('alert' in r for r in rules)} alerts, {sum('record' in r for r in rules)} recording rules; "
                 "severity, summary, description on every alert", "; ".join(problems))
    return rules


def check_prometheus(report: Report, docs: dict, promtool: str | None) -> None:
    report.section("Prometheus rules (deploy/prometheus)")
    alerts_file = PROM / "alerts.yml"
    rules = check_rules_structure(report, (docs.get(alerts_file) or [{}])[0])
    alerts = {r["alert"]: r for r in rules if "alert" in r}

    def uses(metric: str) -> bool:
        def expand(expr: str, depth: int = 0) -> str:
            if depth > 3:
                return expr
            for rule in rules:
                if "record" in rule and rule["record"] in expr:
                    expr += " " + expand(rule["expr"], depth + 1)
            return expr
        return any(metric in expand(rule["expr"]) for rule in alerts.values())

    wanted = {
        "high error rate": "rpc_grpc_status_code",
        "p99 latency": "rpc_server_duration_seconds_bucket",
        "hit-rate drop": "aether_control_affinity_hits_total",
        "audit write failures": "aether_control_audit_write_failures_total",
        "cache fallbacks": "aether_control_user_cache_fallbacks_total",
        "instance down": "up{",
    }
    lacking = [what for what, needle in wanted.items() if not uses(needle)]
    report.check("prometheus/coverage", not lacking, f"alerts for {', '.join(wanted)}", f"no alert covers: {lacking}")

    if promtool is None:
        report.not_run("prometheus/promtool", "promtool is not available (no PATH binary, no Debian package to unpack); "
                                              "rules, unit tests, config and dashboard PromQL were checked structurally only")
        return
    code, out = run([promtool, "check", "rules", str(alerts_file)])
    report.ok("prometheus/promtool check rules", out.splitlines()[-1].strip()) if code == 0 else report.fail("prometheus/promtool check rules", tail(out))
    tests = PROM / "alerts.test.yml"
    if tests.exists():
        code, out = run([promtool, "test", "rules", str(tests)], cwd=PROM, timeout=120)
        count = len((docs.get(tests) or [{}])[0].get("tests", []))
        report.ok("prometheus/promtool test rules", f"{count} unit tests of alerts.yml pass") if code == 0 else \
            report.fail("prometheus/promtool test rules", tail(out, 30))
    else:
        report.fail("prometheus/promtool test rules", "deploy/prometheus/alerts.test.yml is missing")
    config_file = PROM / "prometheus.yml"
    if config_file.exists():
        with tempfile.TemporaryDirectory(prefix="aether-control-prom-") as tmp:
            config = (docs.get(config_file) or [{}])[0]
            for name in config.get("rule_files", []):
                shutil.copy(PROM / name, Path(tmp) / name)
            # promtool opens credential files: point them at a stand-in.
            for job in config.get("scrape_configs", []):
                for key in ("authorization", "oauth2"):
                    if isinstance(job.get(key), dict) and "credentials_file" in job[key]:
                        Path(tmp, "credentials").write_text("stand-in\n")
                        job[key]["credentials_file"] = str(Path(tmp, "credentials"))
            Path(tmp, "prometheus.yml").write_text(yaml.safe_dump(config))
            code, out = run([promtool, "check", "config", str(Path(tmp, "prometheus.yml"))])
            swapped = False
            if code != 0 and "kubernetes_sd_configs" in out:
                # Debian's promtool is built without Kubernetes discovery.
                for job in config.get("scrape_configs", []):
                    if job.pop("kubernetes_sd_configs", None) is not None:
                        job["static_configs"] = [{"targets": [f"127.0.0.1:{HTTP_PORT}"]}]
                        swapped = True
                Path(tmp, "prometheus.yml").write_text(yaml.safe_dump(config))
                code, out = run([promtool, "check", "config", str(Path(tmp, "prometheus.yml"))])
            if code == 0:
                report.ok("prometheus/promtool check config", "prometheus.yml and its rule files" +
                          (" (kubernetes_sd_configs swapped for static_configs: see note)" if swapped else ""))
                if swapped:
                    report.note("prometheus.yml's kubernetes_sd_configs stanza went unchecked: this promtool "
                                "(Debian's build) has no Kubernetes discovery, so it was swapped for static_configs")
            else:
                report.fail("prometheus/promtool check config", tail(out))
    # /metrics, like every call but health, needs a read-scope bearer token.
    config = (docs.get(config_file) or [{}])[0] if config_file.exists() else {}
    jobs = {job.get("job_name"): job for job in config.get("scrape_configs", [])}
    job = jobs.get("aether-control", {})
    auth = job.get("authorization", {})
    report.check("prometheus/scrape job", bool(job) and (auth.get("credentials_file") or auth.get("credentials")
                                                        or job.get("bearer_token_file")),
                 "job aether-control (the name the alerts use) sends a bearer token",
                 "prometheus.yml needs a scrape job named aether-control with an authorization credential: /metrics answers 401 without one")
    # The dashboard's PromQL, parsed by promtool as recording rules.
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = dashboard_exprs(dashboard)
    with tempfile.TemporaryDirectory(prefix="aether-control-dash-") as tmp:
        group = {"groups": [{"name": "dashboard", "rules": [
            {"record": f"dashboard:panel_{i}:expr", "expr": grafana_to_promql(expr)} for i, (_, expr) in enumerate(exprs)]}]}
        Path(tmp, "dashboard.yml").write_text(yaml.safe_dump(group))
        code, out = run([promtool, "check", "rules", str(Path(tmp, "dashboard.yml"))])
        report.ok("grafana/promql", f"{len(exprs)} panel queries parse (promtool, Grafana variables substituted)") if code == 0 else \
            report.fail("grafana/promql", tail(out))


def check_metric_names(report: Report, docs: dict) -> None:
    report.section("Metric names (alerts and dashboard vs. src/)")
    exported = exported_metrics()
    if not exported:
        report.fail("metrics/exported", "no metric names found in src/")
        return
    rules_doc = (docs.get(PROM / "alerts.yml") or [{}])[0]
    rules = [r for g in rules_doc.get("groups", []) for r in g.get("rules", [])]
    recorded = {r["record"] for r in rules if "record" in r}
    dashboard = json.loads(DASHBOARD.read_text())
    sources = [("alerts.yml", r.get("alert") or r.get("record"), r.get("expr", "")) for r in rules]
    tests = (docs.get(PROM / "alerts.test.yml") or [{}])[0]
    for test in tests.get("tests", []):
        for series in test.get("input_series", []):
            sources.append(("alerts.test.yml", test.get("name"), series.get("series", "")))
    sources += [("dashboard", title, expr) for title, expr in dashboard_exprs(dashboard)]
    unknown = []
    used: set[str] = set()
    for where, name, expr in sources:
        for metric in METRIC_RE.findall(expr):
            used.add(metric)
            if metric not in exported:
                unknown.append(f"{where} {name}: {metric}")
        for rec in RECORDED_RE.findall(expr):
            if rec not in recorded:
                unknown.append(f"{where} {name}: recording rule {rec} is not defined")
    report.check("metrics/names", not unknown, f"{len(used)} metric names used, every one exported by src/",
                 "unknown: " + "; ".join(unknown))
    families = {m for m in exported if m.startswith("aether_control_") and not m.endswith(("_bucket", "_sum", "_count"))}
    unused = sorted(m for m in families - used if "test" not in m and m != "aether_control_affinity_store_info")
    if unused:
        report.note("exported but on no dashboard panel or alert: " + ", ".join(unused))


def check_dashboard(report: Report) -> None:
    report.section("Grafana dashboard (deploy/grafana)")
    dashboard = json.loads(DASHBOARD.read_text())
    problems = []
    for key in ("uid", "title", "schemaVersion", "panels", "templating"):
        if not dashboard.get(key):
            problems.append(f"top-level {key}")
    ids, cells = set(), {}
    variables = {v["name"] for v in dashboard.get("templating", {}).get("list", [])}
    for panel in dashboard.get("panels", []):
        pid, grid = panel.get("id"), panel.get("gridPos", {})
        if pid in ids:
            problems.append(f"panel id {pid} repeated")
        ids.add(pid)
        if not all(isinstance(grid.get(k), int) for k in ("x", "y", "w", "h")) or grid["x"] + grid["w"] > 24:
            problems.append(f"panel {pid} gridPos {grid}")
            continue
        for dx in range(grid["w"]):
            for dy in range(grid["h"]):
                cell = (grid["x"] + dx, grid["y"] + dy)
                if cell in cells:
                    problems.append(f"panels {cells[cell]} and {pid} overlap")
                    break
                cells[cell] = pid
            else:
                continue
            break
        if panel.get("type") == "row":
            continue
        if panel.get("datasource", {}).get("uid") != "${datasource}":
            problems.append(f"panel {pid} datasource must be the ${{datasource}} variable")
        refs = [t.get("refId") for t in panel.get("targets", [])]
        if not refs or len(set(refs)) != len(refs) or not all(t.get("expr") for t in panel.get("targets", [])):
            problems.append(f"panel {pid} ({panel.get('title')}) targets need unique refIds and exprs")
        for target in panel.get("targets", []):
            for var in re.findall(r"\$\{?(\w+)\}?", target.get("expr", "")):
                if not var.startswith("__") and var not in variables:
                    problems.append(f"panel {pid}: ${var} is not a dashboard variable")
    report.check("grafana/structure", not problems,
                 f"{len(ids)} panels, unique ids, no overlaps, datasource and variables ({', '.join(sorted(variables))}) resolve",
                 "; ".join(problems))
    exprs = " ".join(e for _, e in dashboard_exprs(dashboard))
    wanted = {
        "RPC rate by method and code": "by (rpc_service, rpc_method, rpc_grpc_status_code) (rate(rpc_server_requests_total",
        "p50 latency": "histogram_quantile(0.5,",
        "p99 latency": "histogram_quantile(0.99,",
        "affinity hit rate": "aether_control_affinity_misses_total",
        "active affinities": "aether_control_affinity_active",
        "switches": "aether_control_affinity_switches_total",
        "invalidations by reason": "by (job, namespace, reason) (rate(aether_control_affinity_invalidations_total",
        "cache fallbacks": "aether_control_model_cache_fallbacks_total",
        "audit failures": "aether_control_audit_write_failures_total",
    }
    lacking = [what for what, needle in wanted.items() if needle not in exprs]
    report.check("grafana/panels", not lacking, ", ".join(wanted), f"no panel for: {lacking}")
    shared = re.findall(r"(\w+)\s*(?:by \([^)]*\))?\s*\(\s*(?:rate|increase)?\(?\s*(aether_control_affinity_\w+)", exprs)
    summed = sorted({metric for agg, metric in shared if agg == "sum"})
    report.check("grafana/shared counters", not summed,
                 "cluster-wide affinity counters aggregated with max over pods (a sum would count them once per pod)",
                 f"summed directly over pods: {summed}")


# --------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--promtool", help="path to promtool")
    parser.add_argument("--strict-tools", action="store_true", help="a check that could not run is a failure")
    parser.add_argument("--no-cargo", action="store_true", help="skip the cargo lockfile check")
    args = parser.parse_args()
    if args.promtool and os.sep in args.promtool:
        args.promtool = str(Path(args.promtool).resolve())
    report = Report(args.strict_tools)

    docs = load_yaml_files(report)
    env_names = config_env_names(report)
    dockerfile = check_dockerfile(report, env_names)
    check_build_context(report, dockerfile.get("context_sources", []), args.no_cargo)
    compose = check_compose(report, docs, env_names)
    k8s = check_k8s(report, docs, env_names)
    check_drain(report, k8s, compose, dockerfile)
    check_prometheus(report, docs, args.promtool)
    check_dashboard(report)
    check_metric_names(report, docs)

    print("\n== Never checked by this script (no Docker engine, no cluster here)")
    for line in (
        "docker build of deploy/Dockerfile (the build context and its cargo lockfile are checked above)",
        "docker compose up: containers starting, health checks passing, migrations on the empty database",
        "kubectl apply to a cluster: admission, scheduling, probes answering, a rolling update under load",
        "Prometheus scraping a live /metrics; Grafana importing and rendering the dashboard",
    ):
        print(f"  -        {line}")
    for note in report.notes:
        print(f"  note     {note}")

    failed = len(report.failed) + (len(report.skipped) if args.strict_tools else 0)
    print(f"\nvalidate-deploy: {report.passed} checks ok, {len(report.failed)} failed, {len(report.skipped)} not run"
          + (" (--strict-tools: not run counts as failed)" if args.strict_tools and report.skipped else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
