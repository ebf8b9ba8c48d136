"""The ``esbhub`` command.

    esbhub serve            run the hub: HTTP API + worker processes (embedded defaults need nothing else)
    esbhub worker           run one worker process (consumers of the routes and the MDM)
    esbhub send TYPE FILE   post a message (over HTTP with an API key, or straight to the broker)
    esbhub dlq …            dead letters: list, show, edit, replay, discard
    esbhub keys …           API keys: create, list, revoke
    esbhub schema export    JSON Schema of every message type
    esbhub db upgrade       bring the hub database to the newest schema

Other parts add their groups (``routes``, ``mdm``, ``adapters``) when installed; they are
imported only when used, so ``--help`` stays fast.
"""

from __future__ import annotations

import getpass
import importlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click

CONTRIB_GROUPS = {
    "routes": ("esbhub.routes.cli", "routes", "Routes: lint, test, deploy, reload (from the routes package)."),
    "mdm": ("esbhub.mdm.cli", "mdm", "Master data: golden records, matching, steward tasks (from the MDM package)."),
    "adapters": ("esbhub.adapters.cli", "adapters", "Adapters: list, describe, health (from the adapters package)."),
    "docs": ("esbhub.docs", "docs", "Reference docs from the models: generate (--check in CI)."),
}


class HubGroup(click.Group):
    """Adds the other parts' command groups lazily (found without importing them)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = list(super().list_commands(ctx))
        for name, (mod, _attr, _help) in CONTRIB_GROUPS.items():
            if name not in names and _module_exists(mod):
                names.append(name)
        return sorted(names)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        cmd = super().get_command(ctx, name)
        if cmd is not None or name not in CONTRIB_GROUPS:
            return cmd
        mod, attr, _help = CONTRIB_GROUPS[name]
        if not _module_exists(mod):
            return None
        return getattr(importlib.import_module(mod), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            if name in CONTRIB_GROUPS and name not in self.commands:
                rows.append((name, CONTRIB_GROUPS[name][2]))
                continue
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit=formatter.width - 6 - max(len(n) for n in self.commands))))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _module_exists(mod: str) -> bool:
    try:
        return importlib.util.find_spec(mod) is not None
    except ModuleNotFoundError:
        return False


class Ctx:
    """Root options, kept so ``serve`` can start workers with the very same settings."""

    def __init__(self, config: str | None, overrides: dict[str, Any]) -> None:
        self.config = config
        self.overrides = {k: v for k, v in overrides.items() if v is not None}
        self._settings: Any = None

    @property
    def settings(self) -> Any:
        if self._settings is None:
            from pydantic import ValidationError

            from esbhub.config import Settings

            try:
                self._settings = Settings.load(self.config, **self.overrides)
            except ValidationError as exc:
                lines = [f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
                raise click.UsageError("invalid settings:\n" + "\n".join(lines)) from None
            except OSError as exc:
                raise click.UsageError(f"cannot read config file: {exc}") from None
        return self._settings

    def root_args(self) -> list[str]:
        args: list[str] = []
        if self.config:
            args += ["--config", self.config]
        for opt, key in (("--data-dir", "data_dir"), ("--broker-url", "broker_url"),
                         ("--database-url", "database_url"), ("--log-level", "log_level")):
            if key in self.overrides:
                args += [opt, str(self.overrides[key])]
        return args


pass_ctx = click.make_pass_decorator(Ctx)


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid{os.getuid()}"


def _configure_logging(settings: Any) -> None:
    from esbhub.logging import configure

    configure(settings.log_level)


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def _read_input(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise click.BadParameter(f"cannot read '{path}': {exc.strerror}") from None


@click.group(cls=HubGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--config", "-c", type=click.Path(dir_okay=False), envvar="ESBHUB_CONFIG",
              help="YAML settings file (fields of esbhub.config.Settings). Env: ESBHUB_CONFIG.")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Where embedded databases and state live [./var].")
@click.option("--broker-url", help="sqlite:///PATH (embedded, default) or amqp://user@host:5672// (RabbitMQ).")
@click.option("--database-url", help="SQLAlchemy URL of the hub database [SQLite under --data-dir].")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), help="Log level [info].")
@click.version_option(package_name="esbhub")
@click.pass_context
def main(ctx: click.Context, config: str | None, data_dir: str | None, broker_url: str | None,
         database_url: str | None, log_level: str | None) -> None:
    """esbhub — the integration hub: message bus with routes, dead-letter store and master data.

    Start it with `esbhub serve` (embedded defaults: no external service needed); every
    setting can also come from the environment (ESBHUB_BROKER_URL, ESBHUB_PORT, …) or a
    YAML file given with --config. Every HTTP call but /healthz and /readyz needs an API key;
    the first `serve` creates an admin key and prints it once (also in DATA_DIR/admin.key).
    """
    ctx.obj = Ctx(config, {"data_dir": data_dir, "broker_url": broker_url,
                           "database_url": database_url, "log_level": log_level})


# ---------------------------------------------------------------------------------- serve
class WorkerPool:
    """The ``esbhub worker`` subprocesses of ``serve``: started, restarted if they die, stopped."""

    def __init__(self, argv: list[str], count: int, env: dict[str, str]) -> None:
        self.argv, self.count, self.env = argv, count, env
        self.procs: list[subprocess.Popen[bytes]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.procs = [self._spawn() for _ in range(self.count)]
        self._thread = threading.Thread(target=self._watch, name="worker-watch", daemon=True)
        self._thread.start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.argv, env=self.env)

    def _watch(self) -> None:
        from esbhub.logging import get_logger

        log = get_logger("esbhub.serve")
        backoff = 1.0
        while not self._stop.wait(1.0):
            for i, p in enumerate(self.procs):
                rc = p.poll()
                if rc is None or self._stop.is_set():
                    continue
                _mark_dead(p.pid)
                log.error("worker_exited", pid=p.pid, returncode=rc, restart_in=backoff)
                if self._stop.wait(backoff):
                    return
                backoff = min(backoff * 2, 30.0)
                self.procs[i] = self._spawn()
                log.info("worker_restarted", pid=self.procs[i].pid)

    def stop(self, timeout: float = 15.0) -> None:
        self._stop.set()
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
            _mark_dead(p.pid)


def _mark_dead(pid: int) -> None:
    try:
        from esbhub.monitoring.metrics import mark_process_dead
    except ImportError:
        return
    mark_process_dead(pid)


def _print_admin_key(key: str | None, path: Path) -> None:
    if key:
        bar = "=" * 78
        click.echo(f"\n{bar}\n  Admin API key (shown once; also written to {path}, mode 0600):\n\n"
                   f"    {key}\n\n  Use it as 'Authorization: Bearer <key>'; create per-system keys with\n"
                   f"  'esbhub keys create NAME --scope ingest --type payment.v1'.\n{bar}\n")
    elif path.exists():
        click.echo(f"Admin API key: see {path}")
    else:
        click.echo(f"An admin key exists but {path} is gone; make a new one with "
                   "'esbhub keys create NAME --scope admin' (and revoke the old one).")


@main.command()
@click.option("--host", help="Listen address [settings.host = 127.0.0.1].")
@click.option("--port", type=int, help="Listen port [settings.port = 8080].")
@click.option("--workers", "workers", type=int, help="Worker processes to start beside the API [settings.workers].")
@click.option("--no-worker", is_flag=True, help="Start no worker process (API only).")
@click.option("--http-workers", type=click.IntRange(1, 64), default=1, show_default=True, envvar="ESBHUB_HTTP_WORKERS",
              help="HTTP server processes (uvicorn workers) sharing the port; 2 on a 2-core machine for "
              "peak ingest. Env: ESBHUB_HTTP_WORKERS.")
@click.option("--upgrade/--no-upgrade", "do_upgrade", default=None,
              help="Run database migrations first [on for the embedded SQLite database].")
@click.option("--create-admin-key/--no-create-admin-key", "admin_key", default=None,
              help="Create and print an admin key if none exists [on for embedded defaults].")
@click.option("--demo", is_flag=True, help="Also run the telecom demo: simulators, reference routes and traffic "
              "(fresh DATA_DIR/demo), then print a checked summary (esbhub.telecom.demo).")
@pass_ctx
def serve(c: Ctx, host: str | None, port: int | None, workers: int | None, no_worker: bool,
          http_workers: int, do_upgrade: bool | None, admin_key: bool | None, demo: bool = False) -> None:
    """Run the hub: migrations, admin key, worker processes and the HTTP API; prints its URL.

    SIGTERM / SIGINT (Ctrl-C) stop the API and the workers cleanly.
    """
    if demo:  # the demo starts from nothing each time, in its own data dir
        from esbhub.telecom.demo import demo_data_dir

        c.overrides["data_dir"] = str(demo_data_dir(c.settings.data_dir))
        c._settings = None
    if host:
        c.overrides["host"] = host
    if port:
        c.overrides["port"] = port
    settings = c.settings
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # Metrics of every process (API, workers) are aggregated through files in this directory;
    # it must be set before prometheus_client is imported anywhere in this process.
    mp_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or str(settings.data_dir / "prometheus")
    shutil.rmtree(mp_dir, ignore_errors=True)
    Path(mp_dir).mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = mp_dir
    _configure_logging(settings)

    from esbhub.auth.store import ApiKeyStore, ensure_admin_key
    from esbhub.db import upgrade

    db_url = settings.effective_database_url
    if do_upgrade or (do_upgrade is None and db_url.startswith("sqlite")):
        import logging

        logging.getLogger("alembic").setLevel(logging.WARNING)  # its per-plugin INFO lines are noise here
        upgrade(db_url)
    if admin_key or (admin_key is None and settings.embedded):
        key, path = ensure_admin_key(ApiKeyStore(db_url), settings)
        _print_admin_key(key, path)

    # Own the stop signals for the whole run, so workers are stopped before we exit.
    stop_signals: list[int] = []

    def on_signal(sig: int, _frame: Any) -> None:
        stop_signals.append(sig)

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, on_signal)

    n_workers = 0 if no_worker else (workers if workers is not None else settings.workers)
    demo_run = None
    if demo:  # before the workers start: they inherit the demo's environment (routes dir, resource DB)
        from esbhub.telecom.demo import ServeDemo

        demo_run = ServeDemo(settings)
    pool = WorkerPool([sys.executable, "-m", "esbhub.cli", *c.root_args(), "worker"], n_workers, dict(os.environ))
    if n_workers:
        pool.start()
    url = f"http://{settings.host}:{settings.port}"
    click.echo(f"esbhub serving at {url}  (API docs {url}/docs; {n_workers} worker process(es); "
               f"broker {'embedded' if settings.embedded else 'rabbitmq'})", err=False)
    sys.stdout.flush()
    try:
        if stop_signals:
            return
        if demo_run is not None:
            demo_run.start(url)
        _run_http(settings, http_workers)
    finally:
        pool.stop()  # the workers first: their route sources poll the demo's peers until they stop
        if demo_run is not None:
            demo_run.stop()
        click.echo("esbhub stopped")


def _run_http(settings: Any, http_workers: int) -> None:
    import uvicorn

    common: dict[str, Any] = {
        "host": settings.host, "port": settings.port, "log_level": "warning", "access_log": False,
        "http": "httptools" if _module_exists("httptools") else "h11",
        "loop": "uvloop" if _module_exists("uvloop") else "asyncio",
        "backlog": 4096, "timeout_keep_alive": 30, "server_header": False,
    }
    if http_workers > 1:
        os.environ["ESBHUBSERVE_SETTINGS"] = settings.model_dump_json()
        uvicorn.run("esbhub.api.app:app_from_env", factory=True, workers=http_workers, **common)
        return
    from esbhub.api.app import create_app

    server = uvicorn.Server(uvicorn.Config(create_app(settings), **common))
    server.run()


# --------------------------------------------------------------------------------- worker
def build_subscriptions(settings: Any, broker: Any, store: Any) -> list[Any]:
    """Subscriptions of a worker: the routes runtime and the MDM service, when installed."""
    from esbhub.logging import get_logger

    log = get_logger("esbhub.worker")
    subs: list[Any] = []
    for mod, fn, args in (("esbhub.routes.runtime", "load_subscriptions", (settings, broker, store)),
                          ("esbhub.mdm.realtime", "subscriptions", (settings, broker))):
        if not _module_exists(mod):
            continue
        factory = getattr(importlib.import_module(mod), fn, None)
        if factory is None:
            log.warning("subscriptions_provider_missing", module=mod, function=fn)
            continue
        got = list(factory(*args))
        log.info("subscriptions_loaded", module=mod, count=len(got), names=[s.name for s in got])
        subs += got
    return subs


@main.command()
@pass_ctx
def worker(c: Ctx) -> None:
    """Run one worker process: consume the queues of the routes and the MDM until SIGTERM/SIGINT."""
    settings = c.settings
    _configure_logging(settings)
    from esbhub.config import set_process_settings

    set_process_settings(settings)  # sinks and look-ups not handed the settings (mdm_link, enrich.mdm) use these
    from esbhub.bus.broker import create_broker
    from esbhub.bus.store import BusStore
    from esbhub.bus.worker import Worker
    from esbhub.errors import ConfigError

    broker = create_broker(settings.effective_broker_url, exchange=settings.exchange)
    broker.connect()
    store = BusStore(settings.effective_database_url)
    try:
        subs = build_subscriptions(settings, broker, store)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        w = Worker(broker, store, subs, settings)
        if _module_exists("esbhub.routes.runtime"):  # routes hot reload + pause/resume need the Worker
            importlib.import_module("esbhub.routes.runtime").attach(w)
        w.run_forever()
    finally:
        store.close()
        broker.close()


# ----------------------------------------------------------------------------------- send
def _api_key(c: Ctx, key: str | None) -> str | None:
    if key:
        return key
    from esbhub.auth.store import admin_key_path

    path = admin_key_path(c.settings)
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


@main.command()
@click.argument("type_name", metavar="TYPE")
@click.argument("file", type=str)
@click.option("--url", help="Hub base URL [http://settings.host:settings.port].")
@click.option("--key", envvar="ESBHUB_API_KEY", help="API key [env ESBHUB_API_KEY, else DATA_DIR/admin.key].")
@click.option("--sync", "sync_timeout", type=float, default=None, metavar="SECONDS",
              help="Wait up to SECONDS for the reply (request-reply).")
@click.option("--direct", is_flag=True, help="Validate here and publish straight to the broker (no HTTP, no key).")
@click.option("--source", default="cli", show_default=True, help="Source system name (with --direct).")
@pass_ctx
def send(c: Ctx, type_name: str, file: str, url: str | None, key: str | None, sync_timeout: float | None,
         direct: bool, source: str) -> None:
    """Post the JSON payload in FILE ('-' = stdin) as a message of TYPE (e.g. payment.v1).

    Prints the answer ({"id": …} or the reply); exits non-zero with the error otherwise.
    """
    body = _read_input(file)
    settings = c.settings
    if direct:
        _send_direct(settings, type_name, body, source)
        return
    import httpx

    base = (url or f"http://{settings.host}:{settings.port}").rstrip("/")
    api_key = _api_key(c, key)
    if not api_key:
        raise click.UsageError("no API key: give --key, set ESBHUB_API_KEY, or run where DATA_DIR/admin.key exists")
    params = {"mode": "sync", "timeout": str(sync_timeout)} if sync_timeout else None
    try:
        r = httpx.post(f"{base}/v1/messages/{type_name}", content=body, params=params,
                       headers={"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"},
                       timeout=(sync_timeout or 0) + 30)
    except httpx.HTTPError as exc:
        raise click.ClickException(f"cannot reach the hub at {base}: {exc}") from None
    try:
        data = r.json()
    except ValueError:
        data = {"status": r.status_code, "body": r.text[:2000]}
    if r.is_success:
        _echo_json(data)
        return
    click.echo(json.dumps(data, indent=2, ensure_ascii=False), err=True)
    sys.exit(1)


def _send_direct(settings: Any, type_name: str, body: bytes, source: str) -> None:
    import orjson

    from esbhub.bus.broker import create_broker
    from esbhub.bus.envelope import Envelope
    from esbhub.bus.store import BusStore
    from esbhub.errors import InvalidMessage
    from esbhub.schemas import validate_payload

    try:
        payload = validate_payload(type_name, orjson.loads(body))
    except orjson.JSONDecodeError as exc:
        raise click.ClickException(f"not valid JSON: {exc}") from None
    except InvalidMessage as exc:
        raise click.ClickException(str(exc)) from None
    env = Envelope.create(type_name, payload, source=source)
    broker = create_broker(settings.effective_broker_url, exchange=settings.exchange)
    broker.connect()
    try:
        broker.publish(env, timeout=settings.publish_timeout)
    finally:
        broker.close()
    store = BusStore(settings.effective_database_url)
    try:
        store.record_accepted([env])
        store.flush()
    finally:
        store.close()
    _echo_json({"id": env.id})


# ------------------------------------------------------------------------------------ dlq
@main.group()
def dlq() -> None:
    """Dead letters: list/filter, show, edit the payload, replay (one, by filter, bulk with a rate), discard."""


def _store(c: Ctx) -> Any:
    from esbhub.bus.store import BusStore

    return BusStore(c.settings.effective_database_url)


def _filter_options(f: Any) -> Any:
    for opt in reversed([
        click.option("--subscription", "-s", help="Route / subscription name."),
        click.option("--type", "type_", help="Message type, e.g. payment.v1."),
        click.option("--error-type", help="Exception class, e.g. PermanentError."),
        click.option("--since", help="Dead-lettered at or after (ISO 8601)."),
        click.option("--until", help="Dead-lettered before (ISO 8601)."),
    ]):
        f = opt(f)
    return f


def _flt(subscription: str | None, type_: str | None, error_type: str | None, since: str | None,
         until: str | None) -> dict[str, Any]:
    d = {"subscription": subscription, "type": type_, "error_type": error_type, "since": since, "until": until}
    return {k: v for k, v in d.items() if v is not None}


@dlq.command("list")
@_filter_options
@click.option("--status", type=click.Choice(["dead", "replayed", "discarded", "all"]), default="dead", show_default=True)
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--offset", type=int, default=0)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_ctx
def dlq_list(c: Ctx, subscription: str | None, type_: str | None, error_type: str | None, since: str | None,
             until: str | None, status: str, limit: int, offset: int, as_json: bool) -> None:
    """List dead letters, oldest first."""
    items = _store(c).dlq_list(**_flt(subscription, type_, error_type, since, until), status=status,
                               limit=limit, offset=offset)
    if as_json:
        _echo_json(items)
        return
    if not items:
        click.echo("no dead letters match")
        return
    click.echo(f"{'ID':<28} {'SUBSCRIPTION':<20} {'TYPE':<18} {'ERROR':<22} {'ATT':>3}  DEAD-LETTERED")
    for d in items:
        err = d.get("error") or {}
        click.echo(f"{d['id']:<28} {str(d.get('subscription'))[:20]:<20} {str(d.get('type'))[:18]:<18} "
                   f"{str(err.get('type'))[:22]:<22} {d.get('attempts', 0):>3}  {d.get('dead_lettered_at')}")
        if err.get("message"):
            click.echo(f"{'':<28} └ {str(err['message']).splitlines()[0][:90]}")


@dlq.command("show")
@click.argument("dlq_id")
@pass_ctx
def dlq_show(c: Ctx, dlq_id: str) -> None:
    """Show one dead letter: original envelope, error, attempts, edits."""
    item = _store(c).dlq_get(dlq_id)
    if item is None:
        raise click.ClickException(f"no dead letter '{dlq_id}'")
    _echo_json(item)


@dlq.command("edit")
@click.argument("dlq_id")
@click.argument("file")
@click.option("--no-validate", is_flag=True, help="Do not check the payload against the type's schema.")
@pass_ctx
def dlq_edit(c: Ctx, dlq_id: str, file: str, no_validate: bool) -> None:
    """Replace the payload a replay will use with the JSON in FILE ('-' = stdin); the original is kept."""
    import orjson

    from esbhub.auth import audit
    from esbhub.errors import InvalidMessage
    from esbhub.schemas import SCHEMAS, validate_payload

    try:
        payload = orjson.loads(_read_input(file))
    except orjson.JSONDecodeError as exc:
        raise click.ClickException(f"not valid JSON: {exc}") from None
    store = _store(c)
    item = store.dlq_get(dlq_id)
    if item is None:
        raise click.ClickException(f"no dead letter '{dlq_id}'")
    if not no_validate and item.get("type") in SCHEMAS:
        try:
            payload = validate_payload(item["type"], payload)
        except InvalidMessage as exc:
            raise click.ClickException(str(exc)) from None
    try:
        out = store.dlq_edit(dlq_id, payload, editor=_actor())
    except (KeyError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    audit(_actor(), "dead_letter_edited", dlq_id)
    click.echo(f"edited {dlq_id} ({len(out.get('edits', []))} edit(s)); replay it with 'esbhub dlq replay {dlq_id}'")


@dlq.command("replay")
@click.argument("ids", nargs=-1)
@_filter_options
@click.option("--all-matching", is_flag=True, help="Replay every dead letter matching the filter options.")
@click.option("--rate", type=float, help="At most this many messages per second (bulk replays).")
@pass_ctx
def dlq_replay(c: Ctx, ids: tuple[str, ...], subscription: str | None, type_: str | None, error_type: str | None,
               since: str | None, until: str | None, all_matching: bool, rate: float | None) -> None:
    """Republish dead letters (same id, attempt 0, edited payload if any) to their subscription.

    Either IDS, or --all-matching with filter options (e.g. --subscription billing --error-type TimeoutError).
    """
    from esbhub.auth import audit
    from esbhub.bus.broker import create_broker

    flt = _flt(subscription, type_, error_type, since, until)
    if bool(ids) == all_matching:
        raise click.UsageError("give dead-letter IDS, or --all-matching with filter options")
    settings = c.settings
    broker = create_broker(settings.effective_broker_url, exchange=settings.exchange)
    broker.connect()
    try:
        if ids:
            n = _store(c).dlq_replay(broker, list(ids), rate_per_s=rate, by=_actor())
        else:
            n = _store(c).dlq_replay(broker, None, filter=flt, rate_per_s=rate, by=_actor())
    finally:
        broker.close()
    audit(_actor(), "dead_letters_replayed", ",".join(ids) or json.dumps(flt), count=n)
    click.echo(f"replayed {n}")


@dlq.command("discard")
@click.argument("ids", nargs=-1, required=True)
@click.option("--reason", default="", help="Why (kept with the record).")
@pass_ctx
def dlq_discard(c: Ctx, ids: tuple[str, ...], reason: str) -> None:
    """Discard dead letters (kept as 'discarded' for audit, never replayed)."""
    from esbhub.auth import audit

    n = _store(c).dlq_discard(list(ids), by=_actor(), reason=reason)
    audit(_actor(), "dead_letters_discarded", ",".join(ids), count=n, reason=reason)
    click.echo(f"discarded {n}")


# ----------------------------------------------------------------------------------- keys
@main.group()
def keys() -> None:
    """API keys: create (shown once), list, revoke. Keys are stored hashed."""


def _keys(c: Ctx) -> Any:
    from esbhub.auth.store import ApiKeyStore

    return ApiKeyStore(c.settings.effective_database_url)


@keys.command("create")
@click.argument("name")
@click.option("--scope", "scopes", multiple=True, default=["ingest"], show_default=True,
              type=click.Choice(["ingest", "read", "admin", "steward", "routes"]),
              help="What the key may do (repeat). admin implies all.")
@click.option("--type", "types", multiple=True, default=["#"], show_default=True,
              help="Message types it may post, topic patterns (repeat), e.g. payment.v1 or 'party.*'.")
@click.option("--org-scope", help="Organization the key is limited to (stored; enforced in a later version).")
@pass_ctx
def keys_create(c: Ctx, name: str, scopes: tuple[str, ...], types: tuple[str, ...], org_scope: str | None) -> None:
    """Create a key for system NAME and print it (the only time it is shown)."""
    from esbhub.auth import audit

    kid, key = _keys(c).create(name, scopes=list(scopes), types=list(types), org_scope=org_scope, created_by=_actor())
    audit(_actor(), "key_created", kid, name=name, scopes=list(scopes), types=list(types))
    click.echo(f"key id: {kid}\nkey:    {key}\n(shown once; it is stored only as a hash)")


@keys.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.option("--active", is_flag=True, help="Only keys not revoked.")
@pass_ctx
def keys_list(c: Ctx, as_json: bool, active: bool) -> None:
    """List keys (ids, names, scopes, types — never the keys)."""
    items = _keys(c).list(include_revoked=not active)
    if as_json:
        _echo_json(items)
        return
    click.echo(f"{'KEY ID':<14} {'NAME':<20} {'SCOPES':<22} {'TYPES':<26} STATUS")
    for k in items:
        status = "active" if k["active"] else f"revoked {k['revoked_at']}"
        click.echo(f"{k['key_id']:<14} {k['name'][:20]:<20} {','.join(k['scopes'])[:22]:<22} "
                   f"{','.join(k['types'])[:26]:<26} {status}")


@keys.command("revoke")
@click.argument("key_id")
@pass_ctx
def keys_revoke(c: Ctx, key_id: str) -> None:
    """Revoke a key (API processes stop accepting it within a few seconds)."""
    from esbhub.auth import audit

    if not _keys(c).revoke(key_id, by=_actor()):
        raise click.ClickException(f"no active key '{key_id}'")
    audit(_actor(), "key_revoked", key_id)
    click.echo(f"revoked {key_id}")


# ------------------------------------------------------------------------------ schema, db
@main.group()
def schema() -> None:
    """Canonical message schemas."""


@schema.command("export")
@click.option("--out", "-o", default="schemas", show_default=True, help="Directory to write TYPE.json files to; '-' = stdout.")
def schema_export(out: str) -> None:
    """Write the JSON Schema of every message type (party.v1, bill.v1, …)."""
    from esbhub.schemas import json_schemas

    schemas = json_schemas()
    if out == "-":
        _echo_json(schemas)
        return
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    for name, sch in schemas.items():
        (d / f"{name}.json").write_text(json.dumps(sch, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    click.echo(f"wrote {len(schemas)} schema(s) to {d}/: {', '.join(schemas)}")


@main.group()
def db() -> None:
    """The hub database (SQLite embedded, PostgreSQL in production)."""


@db.command("upgrade")
@pass_ctx
def db_upgrade(c: Ctx) -> None:
    """Apply every pending migration (all branches: bus, auth, routes, mdm, adapters)."""
    from sqlalchemy.engine import make_url

    from esbhub.db import upgrade

    url = c.settings.effective_database_url
    upgrade(url)
    click.echo(f"database {make_url(url).render_as_string(hide_password=True)} is at the newest revision")


if __name__ == "__main__":
    main()
