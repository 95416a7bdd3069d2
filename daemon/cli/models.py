"""``alignd models list|show|promote|rollback|evaluate``: the registered reward and policy versions (docs/trainers.md).

``promote`` and ``rollback`` move the ``champion`` alias through :class:`daemon.governance.Governance`, which
checks the gates and appends ``model.promoted`` / ``model.rolled_back``; the daemon's outbox publishes those on
the models topic, where serving hears of the new champion. ``list`` marks the versions ``champion`` was rolled
back from and not put back since (events.read_models folds them from the store), with who, when, why
and the rollback's audit record.

``trainers.registry`` (and with it MLflow, about two seconds of imports) is imported inside the handlers, so
that every other command and ``alignd --help`` stay fast.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.cli.command import AddCommand, group, with_app
from daemon.cli.evaluate import add_evaluate_command
from daemon.cli.output import columns, note, pairs, print_json
from events.errors import AlignmentError, ConfigurationError, StoreError
from events.names import MODEL_KINDS, MODEL_PROMOTED

if TYPE_CHECKING:
    from daemon.bootstrap import App
    from daemon.governance import ModelChange
    from events.read_models import RolledBackVersion
    from trainers.registry import RegisteredVersion

# events.names, not trainers.registry: building the parser never imports MLflow.
KINDS = MODEL_KINDS


def add_models_commands(commands: Any, add: AddCommand) -> None:
    """Add ``models list|show|promote|rollback|evaluate`` to the top-level subparsers."""
    models = group(commands, "models", "registered model versions")
    p = add(models, "list", cmd_models_list, "registered versions, newest first: aliases, dataset range, gates")
    p.add_argument("--kind", choices=KINDS, help="only this model (default: all)")
    p = add(models, "show", cmd_models_show, "one version: its tags, its run's metrics and params, its source")
    p.add_argument("kind", choices=KINDS, metavar="KIND", help="reward, policy or detector")
    p.add_argument("version", metavar="VERSION_OR_ALIAS", help="a version number, or an alias such as champion")
    p = add(models, "promote", cmd_models_promote, "make a version the champion, if its evaluation gates passed")
    p.add_argument("kind", choices=KINDS, metavar="KIND", help="reward, policy or detector")
    p.add_argument("version", metavar="VERSION_OR_ALIAS", help="a version number, or an alias such as challenger")
    _governance_arguments(p)
    p.add_argument("--force", action="store_true", help="promote past failed or missing gates (recorded as forced)")
    p = add(models, "rollback", cmd_models_rollback, "restore the previous champion (or --to VERSION)")
    p.add_argument("kind", choices=KINDS, metavar="KIND", help="reward, policy or detector")
    _governance_arguments(p)
    p.add_argument("--to", metavar="VERSION", help="the version to restore (default: the champion before this one)")
    add_evaluate_command(models, add)


def _governance_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reason", required=True, help="why, in a sentence; it goes in the audit trail")
    p.add_argument("--actor", default=None, help="who decided (default: your OS user name)")


def _missing_registry(app: App) -> Path | None:
    """The MLflow SQLite file the registry would be read from, when it does not exist (opening it creates it)."""
    from daemon.bootstrap import missing_sqlite_file

    m = app.settings.mlflow
    return missing_sqlite_file(m.registry_uri or m.tracking_uri)


@with_app
def cmd_models_list(app: App, args: argparse.Namespace) -> int:
    if (missing := _missing_registry(app)) is not None:
        # Nothing was ever registered; a reading command leaves no file behind.
        if args.json:
            print_json([])
        else:
            print(f"no model versions (no MLflow database at {missing.absolute()} yet; `alignd train` registers them)")
        return 0
    versions = app.registry.list_versions(args.kind)
    marks = _rolled_back(app, sorted({v.name for v in versions}))
    rows = [{**version_dict(v), "rolled_back": _mark_dict(marks.get((v.name, v.version)))} for v in versions]
    if args.json:
        print_json(rows)
    else:
        columns(
            ["kind", "version", "aliases", "created (UTC)", "dataset seq", "gates", "objective"],
            [
                (
                    r["kind"],
                    f"{r['version']} (rolled back)" if r["rolled_back"] else r["version"],
                    ", ".join(r["aliases"]),
                    r["created_at"][:16].replace("T", " "),
                    _seq_range(r["dataset"]),
                    r["gates"],
                    r["objective"],
                )
                for r in rows
            ],
        )
        for r in rows:
            if mark := r["rolled_back"]:
                print(
                    f"{r['name']} {r['version']} was rolled back by {mark['actor']} at {mark['occurred_at'][:16]} "
                    f"(UTC) to version {mark['to_version']}: {mark['reason']} (`alignd audit show {mark['event_id']}`)"
                )
    return 0


def _rolled_back(app: App, names: list[str]) -> dict[tuple[str, str], RolledBackVersion]:
    """The versions of ``names`` that ``champion`` was rolled back from, by (name, version), read from the store.

    The listing itself comes from MLflow: without the store (not reachable, not migrated) it is still printed,
    with a note that the marks are missing.
    """
    from daemon.bootstrap import missing_sqlite_file
    from events.read_models import rolled_back_models

    if not names:
        return {}
    url = app.settings.database.url
    if missing_sqlite_file(url) is not None:
        # Connecting would create an empty database file here; with no database there is no rollback to mark.
        note(f"rolled-back versions are not marked: no event store at {url}")
        return {}
    try:
        # One read of the alias changes for every model listed, not one per model.
        return {(m.name, m.version): m for m in rolled_back_models(app.store).values() if m.name in names}
    except (StoreError, ConfigurationError) as exc:
        note(f"rolled-back versions are not marked: the event store cannot be read ({exc})")
        return {}


def _mark_dict(mark: RolledBackVersion | None) -> dict[str, Any] | None:
    if mark is None:
        return None
    return {
        "event_id": mark.event_id,
        "actor": mark.actor,
        "reason": mark.reason,
        "occurred_at": mark.occurred_at.isoformat(),
        "to_version": _number(mark.to_version),
    }


@with_app
def cmd_models_show(app: App, args: argparse.Namespace) -> int:
    from trainers.registry import MODEL_NAMES, VersionNotFoundError

    if (missing := _missing_registry(app)) is not None:
        raise AlignmentError(
            f"no MLflow database at {missing.absolute()}, so no {args.kind} version is registered; "
            "`alignd train` registers them"
        )
    registry = app.registry
    if args.version.isdigit():
        version = registry.get(args.kind, args.version)
    else:
        found = registry.get_by_alias(args.kind, args.version)
        if found is None:
            raise VersionNotFoundError(
                f"{MODEL_NAMES[args.kind]} has no alias {args.version!r}; `alignd models list` shows the versions "
                "and their aliases"
            )
        version = found
    data = version_dict(version)
    data["metrics"] = registry.run_metrics(version.run_id) if version.run_id else {}
    data["params"] = registry.run_params(version.run_id) if version.run_id else {}
    if args.json:
        print_json(data)
        return 0
    aliases = f" ({', '.join(version.aliases)})" if version.aliases else ""
    print(f"{version.name} version {version.version}{aliases}")
    pairs(
        {
            "created": version.created_at.isoformat(timespec="seconds"),
            "run": version.run_id or "",
            "source": version.source,
            "dataset seq": _seq_range(data["dataset"]),
            "gates": data["gates"],
            "objective": data["objective"],
        }
    )
    for title in ("tags", "metrics", "params"):
        print(f"\n{title}:")
        pairs(dict(sorted(data[title].items())), indent="  ")
    return 0


@with_app
def cmd_models_promote(app: App, args: argparse.Namespace) -> int:
    from daemon.governance import PromotionRefusedError

    try:
        change = app.governance.promote(
            args.kind, args.version, reason=args.reason, actor=_actor(args), force=args.force
        )
    except PromotionRefusedError as exc:
        more = (
            " An insufficient gate had evidence for neither pass nor fail: evaluate on the held-out data it names "
            "(more preference pairs or red-team prompts) to decide it."
            if exc.decision.insufficient_gates
            else ""
        )
        print(
            f"alignd: {exc}. Nothing changed; `alignd models show {args.kind} {exc.version}` shows the gate results."
            f"{more} Train or evaluate again, or add --force to promote anyway: the promotion is then recorded as "
            "forced, with the gates that refused it.",
            file=sys.stderr,
        )
        return 2
    return _report(change, args)


@with_app
def cmd_models_rollback(app: App, args: argparse.Namespace) -> int:
    change = app.governance.rollback(args.kind, reason=args.reason, actor=_actor(args), to_version=args.to)
    return _report(change, args)


def _actor(args: argparse.Namespace) -> str:
    return str(args.actor) if args.actor else getpass.getuser()


def _report(change: ModelChange, args: argparse.Namespace) -> int:
    p = change.payload
    if args.json:
        versions = {k: _number(p[k]) for k in ("version", "previous_version") if k in p}
        print_json({"event_id": change.event_id, "type": change.type, "changed": change.appended, **p, **versions})
        return 0
    verb = "promoted" if change.type == MODEL_PROMOTED else "rolled back"
    if not change.appended:
        print(
            f"{p['name']}@{p['alias']} is already version {p['version']} ({verb} by {p['actor']}: {p['reason']}; "
            f"event {change.event_id}); nothing changed"
        )
        return 0
    forced = f" (FORCED: {p['gates'].removeprefix('forced: ')})" if p["forced"] else ""
    print(
        f"{p['name']}@champion: version {p['previous_version'] or '(none)'} -> {p['version']}, {verb} by "
        f"{p['actor']}{forced}: {p['reason']}\nrecorded as {change.event_id}; serving hears of it on the models "
        "topic once the daemon's outbox publishes it"
    )
    return 0


def version_dict(version: RegisteredVersion) -> dict[str, Any]:
    tags = version.tags
    dataset: dict[str, Any] = {key: tags.get(f"alignd.dataset.{key}") for key in ("name", "kind", "sha256")}
    dataset.update({key: _number(tags.get(f"alignd.dataset.{key}")) for key in ("from_seq", "to_seq", "rows")})
    return {
        "kind": version.kind,
        "name": version.name,
        "version": _number(version.version),
        "aliases": list(version.aliases),
        "created_at": version.created_at.isoformat(),
        "run_id": version.run_id,
        "source": version.source,
        "dataset": dataset,
        # trainers.gates writes it ready to read: "passed", "failed: safety, kl", "insufficient evidence: safety".
        "gates": tags.get("alignd.gates", ""),
        "objective": tags.get("alignd.objective", ""),
        "tags": tags,
    }


def _number(value: Any) -> Any:
    """A version, a seq or a count as the number it is (MLflow keeps versions and tags as strings); else as is."""
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return value


def _seq_range(dataset: dict[str, Any]) -> str:
    if dataset.get("from_seq") is None or dataset.get("to_seq") is None:
        return ""
    return f"{dataset['from_seq']}..{dataset['to_seq']}"
