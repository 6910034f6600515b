"""YAML policy files → runtime Tenants. Every error starts with the file name and key path."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from gateway.actions import CompileContext, compile_action
from gateway.auth.keys import public_key
from gateway.errors import PolicyError, PolicyProblem
from gateway.hop import Target
from gateway.limits.base import Rule
from gateway.policy import heap, model
from gateway.policy.parallel import load_many as parallel_load
from gateway.policy.tenant import ApiAuth, ApiKey, CompiledRoute, Kind, OutboundCalls, Tenant
from gateway.protocol import twiml
from gateway.telemetry import cost

MIN_JWT_SECRET_BYTES = 32  # RFC 7518 §3.2: an HS256 key at least as long as the hash
TENANT_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
SUFFIXES = (".yaml", ".yml")
EVENTS = ("initiated", "ringing", "answered", "completed")  # a call's status events, in order

# Which request kinds charge which named bucket (documented in policies/README.md); "llm" is
# charged by the llm action itself, per call to the model, not by a webhook.
BUCKETS_BY_KIND: Mapping[Kind, tuple[str, ...]] = {
    "voice": ("webhooks", "voice"),
    "sms": ("webhooks", "sms"),
    "status": (),
    "api": ("api",),
    "llm": ("llm",),
}


@dataclass(frozen=True, slots=True)
class LoadContext:
    """What a policy needs from outside its file: the environment (secrets) and our public URL."""

    env: Mapping[str, str]
    public_url: str | None = None
    # `switchyard check` collects here what only serving settles (a stream route's own URL
    # without --public-url) instead of refusing it; None when serving: then it is an error.
    notes: list[PolicyProblem] | None = None


def _message(error: ErrorDetails) -> str:
    kind, ctx = error["type"], error.get("ctx", {})
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "greater_than":
        return f"must be > {ctx['gt']:g}"
    if kind == "greater_than_equal":
        return f"must be >= {ctx['ge']:g}"
    if kind == "string_pattern_mismatch":
        return f"{error['input']!r} does not match {ctx['pattern']}"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind == "float_type" and isinstance(error["input"], str):
        # PyYAML reads `1e-4` (no dot) as a string; the strict number fields then refuse it.
        return f"{error['input']!r} is text, not a number (YAML needs a dot in an exponent: 1.0e-4)"
    return error["msg"]


def _problems(file: str, exc: ValidationError) -> list[PolicyProblem]:
    return [PolicyProblem(file, ".".join(str(part) for part in e["loc"]), _message(e)) for e in exc.errors()]


def _rule(name: str, rule: model.BucketRule) -> Rule:
    return Rule(name=name, rate=rule.rate, per=model.PER_SECONDS[rule.per], burst=rule.burst or max(1, int(rule.rate)))


def _prices(prices: model.Prices) -> cost.Prices:
    """The policy's USD prices in µ$, so every later sum is exact integer arithmetic."""
    return cost.Prices(
        webhook=cost.to_micro(prices.webhook),
        voice_minute=cost.to_micro(prices.voice_minute),
        stream_minute=cost.to_micro(prices.stream_minute),
        sms_segment=cost.to_micro(prices.sms_segment),
        models={
            name: cost.ModelPrice(cost.to_micro(price.input_per_1m), cost.to_micro(price.output_per_1m))
            for name, price in prices.models.items()
        },
    )


class _Compiler:
    """Turns one validated Policy into a Tenant, collecting every problem rather than the first."""

    def __init__(self, file: str, tenant_id: str, context: LoadContext, directory: Path = Path()) -> None:
        self.file, self.tenant_id, self.context = file, tenant_id, context
        self.directory = directory
        self.problems: list[PolicyProblem] = []
        self.signing_key: bytes | None = None  # the auth token, once read: `upstream` signs with it
        self.names_files = False  # set by file_bytes: Tenant.names_files

    def problem(self, key: str, message: str) -> None:
        self.problems.append(PolicyProblem(self.file, key, message))

    def secret(self, key: str, variable: str | None) -> bytes | None:
        if variable is None:
            return None
        value = self.context.env.get(variable)
        if not value:
            self.problem(key, f"environment variable {variable} is not set")
            return None
        return value.encode()

    def raw(self, key: str, text: str) -> bytes:
        try:
            return twiml.raw(text)
        except ValueError as exc:
            self.problem(key, str(exc))
            return b""

    def route(self, index: int, route: model.Route, fallback: bytes) -> CompiledRoute:
        key = f"routes.{index}"
        name, value = route.action()
        notes: list[str] | None = [] if self.context.notes is not None else None
        compiled = None
        route_name = route.name or key
        route_fallback = self.raw(f"{key}.fallback", route.fallback) if route.fallback else fallback
        try:
            compiled = compile_action(
                name,
                value,
                CompileContext(
                    self.tenant_id, self.context.public_url, notes, self.context.env, self.signing_key,
                    route=route_name, fallback=route_fallback,
                ),
            )  # fmt: skip
        except ValueError as exc:
            self.problem(f"{key}.{name}", str(exc))
        for note in notes or ():
            self.note(f"{key}.{name}", note)
        return CompiledRoute(
            name=route_name,
            kind=route.match.kind,
            action=name,
            reply=compiled.reply if compiled is not None else b"",
            call=compiled.call if compiled is not None else None,
            fallback=route_fallback,
            to=frozenset(route.match.to) if route.match.to else None,
            from_=re.compile(route.match.from_) if route.match.from_ else None,
            body=re.compile(route.match.body) if route.match.body else None,
        )

    def api(self, api: model.Api) -> ApiAuth:
        keys: list[ApiKey] = []
        if api.jwt_secret_env is not None:
            secret = self.hs256_secret("api.jwt_secret_env", api.jwt_secret_env)
            keys.append(ApiKey(None, "HS256", secret))
        for i, key in enumerate(api.keys):
            where = f"api.keys.{i}"
            if key.secret_env is not None:
                keys.append(ApiKey(key.kid, key.alg, self.hs256_secret(f"{where}.secret_env", key.secret_env)))
                continue
            if key.public_key_env is not None:
                where, pem = f"{where}.public_key_env", self.secret(f"{where}.public_key_env", key.public_key_env)
            else:
                assert key.public_key_file is not None
                where = f"{where}.public_key_file"
                pem = self.file_bytes(where, key.public_key_file)
            if pem is not None:
                try:
                    keys.append(ApiKey(key.kid, key.alg, public_key(key.alg, pem)))
                except ValueError as exc:
                    self.problem(where, str(exc))
        return ApiAuth(
            keys=tuple(keys),
            audience=api.audience,
            issuer=api.issuer,
            jwks_url=api.jwks_url,
            jwks_refresh=float(api.jwks_refresh_s),
            require_scopes=api.require_scopes,
        )

    def hs256_secret(self, key: str, variable: str) -> bytes:
        secret = self.secret(key, variable)
        if secret is not None and len(secret) < MIN_JWT_SECRET_BYTES:
            needed = f"HS256 needs at least {MIN_JWT_SECRET_BYTES}"
            self.problem(key, f"{variable} holds {len(secret)} bytes; {needed}")
        return secret or b""

    def file_bytes(self, key: str, name: str) -> bytes | None:
        """A file a policy names, relative to the policies directory."""
        self.names_files = True
        path = Path(name) if Path(name).is_absolute() else self.directory / name
        try:
            return path.read_bytes()
        except OSError as exc:
            self.problem(key, f"cannot read {name}: {exc.strerror or type(exc).__name__}")
            return None

    def target(self, key: str, url: str | None) -> Target | None:
        """A URL the gateway sends to, parsed once; a problem (not a crash) when it cannot be."""
        if url is None:
            return None
        try:
            return Target.parse(url)
        except ValueError as exc:  # a host missing, a port out of range, a broken IPv6 literal
            self.problem(key, f"not a URL the gateway can send to: {exc}")
            return None

    def note(self, key: str, message: str) -> None:
        if self.context.notes is not None:
            self.context.notes.append(PolicyProblem(self.file, key, message))

    def tenant(self, policy: model.Policy) -> Tenant:
        account = policy.twilio
        primary = self.secret("twilio.auth_token_env", account.auth_token_env)
        self.signing_key = primary
        previous = self.secret("twilio.previous_auth_token_env", account.previous_auth_token_env)
        api = self.api(policy.api) if policy.api is not None else None
        outbound = None
        if policy.outbound is not None:
            out = policy.outbound
            outbound = OutboundCalls(
                cps=out.cps,
                to_allow=tuple(out.to_allow),
                to_deny=tuple(out.to_deny),
                urls=frozenset(out.urls),
                allow_twiml=out.allow_twiml,
                queue_max=out.queue_max,
                queue_timeout=out.queue_timeout_ms / 1000,
                ring_timeout=out.ring_timeout_s,
                time_limit=out.time_limit_s,
                status_callback=out.status_callback,
                status_target=self.target("outbound.status_callback", out.status_callback),
                # In Twilio's order; `completed` always (the final status frees the call's slot).
                status_events=tuple(e for e in EVENTS if e in out.status_events or e == "completed"),
            )
        fallback: dict[Literal["voice", "sms"], bytes] = {"voice": twiml.VOICE_FALLBACK, "sms": twiml.EMPTY}
        refusal: dict[Literal["voice", "sms"], bytes] = {"voice": twiml.REJECT_BUSY, "sms": twiml.EMPTY}
        # Over budget, the same defaults as over a rate limit: an unanswered call is not billed.
        budget_refusal: dict[Literal["voice", "sms"], bytes] = {"voice": twiml.REJECT_BUSY, "sms": twiml.EMPTY}
        budget = policy.budget.refusal if policy.budget is not None else model.ByKind()
        for kind in ("voice", "sms"):
            for table, name, given in (
                (fallback, "fallback", getattr(policy.fallback, kind)),
                (refusal, "refusal", getattr(policy.refusal, kind)),
                (budget_refusal, "budget.refusal", getattr(budget, kind)),
            ):
                if given is not None:
                    table[kind] = self.raw(f"{name}.{kind}", given)
        routes = tuple(self.route(i, r, fallback[r.match.kind]) for i, r in enumerate(policy.routes))
        prices = _prices(policy.prices)
        daily_budget = None
        call_reserve = 0
        if policy.budget is not None:
            daily_budget = cost.to_micro(policy.budget.daily_usd)
            call_reserve = policy.budget.call_reserve_minutes * prices.voice_minute
            if prices.free:
                # Legal, but nothing is ever charged against the cap, so it can never refuse.
                self.note("budget", "every price is 0, so nothing counts against daily_usd")
        limits = policy.limits
        named = {n: getattr(limits, n) for names in BUCKETS_BY_KIND.values() for n in names}
        rules = {
            kind: tuple(_rule(n, named[n]) for n in names if named[n] is not None)
            for kind, names in BUCKETS_BY_KIND.items()
        }
        return Tenant(
            id=self.tenant_id,
            file=self.file,
            account_sid=account.account_sid,
            keys=tuple(k for k in (primary, previous) if k),
            numbers=frozenset(policy.numbers),
            rules=rules,
            routes=routes,
            fallback=fallback,
            refusal=refusal,
            on_store_failure=limits.on_store_failure,
            concurrent_calls=limits.concurrent_calls,
            concurrent_streams=limits.concurrent_streams,
            api=api,
            outbound=outbound,
            prices=prices,
            daily_budget=daily_budget,
            call_reserve=call_reserve,
            webhook_timeout=account.webhook_timeout_ms / 1000,
            budget_refusal=budget_refusal,
            names_files=self.names_files,
        )


# libyaml's parser where the wheel has it (PyYAML's manylinux wheels do): the pure-Python
# parser was 93 % of a policy load, and the C one parses the same files 7.9x faster. Same
# resolver and constructor (in Python) either way, so the values are the same; the syntax
# errors' wording differs a little, their line and column do not.
_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


_STR, _MAP, _SEQ = "tag:yaml.org,2002:str", "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"
# The scalar tags whose constructors return the value (not a generator): all a policy uses.
_SCALARS = frozenset(f"tag:yaml.org,2002:{t}" for t in ("int", "float", "bool", "null", "timestamp", "binary"))
_MAX_DEPTH = 64  # deeper (or an alias looping on itself) takes PyYAML's own constructor
# A plain scalar's tag depends only on its text and quoting: policies repeat the same keys and
# values thousands of times (`rate`, `per`, `second`), so the resolver's regexes run once each.
_RESOLVED: dict[tuple[str, Any], str] = {}
_RESOLVED_MAX = 50_000


class _Unusual(Exception):
    """A node the fast constructor leaves to PyYAML's (merge keys, sets, an unhashable key)."""


class _UniqueKeyLoader(_SafeLoader):  # type: ignore[valid-type,misc]
    """safe_load keeps the last of two equal keys without a word; a second `limits:` block
    would silently replace the first, so a repeated key is an error here.

    libyaml parses in C but PyYAML builds the values in Python, one generator and three
    isinstance checks per node: with the scalars' resolver that was 60 % of a policy load. For
    the nodes a policy is made of (maps, lists, str/int/float/bool/null) `construct_document`
    builds the values in one recursive walk (2.4x faster); any other node (a merge key, a set,
    an anchor that loops) makes it hand the document to PyYAML's own constructor, same result."""

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        if kind is not yaml.ScalarNode:
            return super().resolve(kind, value, implicit)
        key = (value, implicit)
        tag = _RESOLVED.get(key)
        if tag is None:
            tag = super().resolve(kind, value, implicit)
            if len(value) <= 64 and len(_RESOLVED) < _RESOLVED_MAX:
                _RESOLVED[key] = tag
        return tag

    def construct_document(self, node: yaml.Node) -> Any:
        try:
            return self._plain(node, 0)
        except _Unusual:
            return super().construct_document(node)

    def _plain(self, node: yaml.Node, depth: int) -> Any:
        tag = node.tag
        if tag == _STR:
            return node.value
        if depth > _MAX_DEPTH:
            raise _Unusual
        if tag == _MAP:
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = key_node.value if key_node.tag == _STR else self._plain(key_node, depth + 1)
                try:
                    if key in out:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark
                        )
                except TypeError:  # an unhashable key: PyYAML's constructor says so
                    raise _Unusual from None
                out[key] = self._plain(value_node, depth + 1)
            return out
        if tag == _SEQ:
            return [self._plain(item, depth + 1) for item in node.value]
        if tag in _SCALARS:
            return self.yaml_constructors[tag](self, node)
        raise _Unusual

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:  # `<<: *base`: its keys may be given again here, by design
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark
                )
            seen.add(key)
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping


def parse(file: str, data: bytes) -> Any:
    """One file's YAML; a syntax error names the file, line and column."""
    try:
        return yaml.load(data.decode("utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        raise PolicyError([PolicyProblem(file, "", f"{where}: {exc.problem}")]) from None
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise PolicyError([PolicyProblem(file, "", f"cannot read: {exc}")]) from None


def _bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise PolicyError([PolicyProblem(path.name, "", f"cannot read: {exc}")]) from None


def load_file(path: Path, context: LoadContext) -> Tenant:
    """One file → one Tenant, or a PolicyError listing every problem in it."""
    return load_bytes(path, _bytes(path), context)


def load_bytes(path: Path, content: bytes, context: LoadContext) -> Tenant:
    """One file's content → one Tenant (`path` names it and anchors the files it names)."""
    file, tenant_id = path.name, path.stem
    data = parse(file, content)
    if not TENANT_ID.match(tenant_id):
        raise PolicyError([PolicyProblem(file, "", f"file name must be a tenant id matching {TENANT_ID.pattern}")])
    if not isinstance(data, dict):
        raise PolicyError([PolicyProblem(file, "", "the file must hold a mapping of keys (twilio, numbers, ...)")])
    try:
        policy = model.Policy.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(_problems(file, exc)) from None
    compiler = _Compiler(file, tenant_id, context, path.parent)
    tenant = compiler.tenant(policy)
    if compiler.problems:
        raise PolicyError(compiler.problems)
    return tenant


def stamps_or_raise(directory: Path) -> dict[str, Stamp]:
    """Every policy file's stamp, by name; OSError if the directory cannot be listed. One
    scandir and one stat a file (pathlib's iterdir, is_file and stat were two, and sorting
    Path objects 0.7 s, at 30,000 files)."""
    found: dict[str, Stamp] = {}
    with os.scandir(directory) as entries:
        for entry in entries:
            name = entry.name
            # Editors leave hidden files (.x.yaml.swp, .#x.yaml) beside the ones being edited.
            if name.startswith(".") or os.path.splitext(name)[1] not in SUFFIXES:
                continue
            try:
                if not entry.is_file():  # follows a symlink (a ConfigMap's files are links)
                    continue
                stat = entry.stat()
            except OSError:
                continue  # gone between the listing and its stat
            found[name] = (stat.st_size, stat.st_mtime_ns, stat.st_ino)
    return {name: found[name] for name in sorted(found)}


Stamp = tuple[int, int, int]
"""A policy file's size, mtime (ns) and inode: any edit, rename over it or ConfigMap swap changes it."""

Digest = bytes
"""A policy file's content hash: a file rewritten with the same bytes (a ConfigMap update
rewrites every file) keeps its tenant without being parsed again."""

Loaded = Mapping[str, tuple[Stamp, Digest, Tenant]]
"""File name -> the stamp and digest it had when read, and its tenant."""


def digest(content: bytes) -> Digest:
    return hashlib.blake2b(content, digest_size=16).digest()


def stamps(directory: Path) -> dict[str, Stamp]:
    """Every policy file's stamp, in name order; empty if the directory is gone (load_set says so)."""
    try:
        return stamps_or_raise(directory)
    except OSError:
        return {}


@dataclass(frozen=True, slots=True)
class LoadedSet:
    """A load's outcome: the stamps it saw, the set it made, and what it refused (on a reload,
    each refused file kept its last good policy, or stayed out if it never had one)."""

    stamps: Mapping[str, Stamp]
    loaded: Loaded
    problems: tuple[PolicyProblem, ...] = ()
    compiled: int = 0  # files compiled anew (the rest kept the tenant they had)


Read = tuple[Tenant | PolicyError | None, Digest, list[PolicyProblem]]
"""One file read: its tenant, its error, or None when its bytes are the ones already loaded;
its digest; its notes. What a loading worker sends back."""


def _read(directory: Path, context: LoadContext, known: Mapping[str, Digest]) -> Callable[[str], Read]:
    def read(name: str) -> Read:
        notes: list[PolicyProblem] | None = [] if context.notes is not None else None
        own = LoadContext(context.env, context.public_url, notes)
        path = directory / name
        try:
            content = _bytes(path)
        except PolicyError as exc:
            return exc, b"", []
        seen = digest(content)
        if known.get(name) == seen:
            return None, seen, []
        try:
            return load_bytes(path, content, own), seen, notes or []
        except PolicyError as exc:
            return exc, seen, notes or []

    return read


def load_set(
    directory: Path,
    context: LoadContext,
    previous: Loaded | None = None,
    seen: Mapping[str, Stamp] | None = None,
    *,
    reread: bool = False,
    parallel: bool = False,
) -> LoadedSet:
    """Every policy file in `directory`, with the checks across files (a tenant defined twice,
    a number in two files) over the whole new set.

    Without `previous` (start-up, `check`) any problem refuses the set: one PolicyError with
    every problem of every file. With it (a reload), only the files whose stamp changed are
    read again (all of them if `reread`: SIGHUP; a file whose bytes are the ones loaded is
    compiled again only if it names other files), and a bad file, or one whose numbers another
    tenant owns, keeps its last good policy (a new one stays out); those problems come back in
    the result. seen: the stamps, if just read. `parallel`: many files read in forked workers
    (policy/parallel.py). Pure but for reading files: safe in a worker thread, off the loop."""
    if not directory.is_dir():
        raise PolicyError([PolicyProblem(str(directory), "", "is not a directory")])
    if seen is None:
        seen = stamps(directory)
    kept = previous or {}
    stale = [name for name, stamp in seen.items() if reread or name not in kept or kept[name][0] != stamp]
    # A stamp changed but not the bytes (touched, or rewritten by a ConfigMap update): kept as
    # it is. A tenant is made of its file's bytes, the environment (fixed for the process) and
    # the files it names, so SIGHUP (`reread`: every file read, whatever its stamp says) compiles
    # again only what changed and what names files: at 30,000 tenants, a second of reading and
    # hashing instead of 20 s of compiling, and no second copy of the set in memory.
    known = {name: kept[name][1] for name in stale if name in kept and not (reread and kept[name][2].names_files)}
    problems: list[PolicyProblem] = []
    fresh: dict[str, Tenant] = {}
    candidates: dict[str, tuple[Stamp, Digest, Tenant]] = {}
    for name, (result, read_digest, notes) in parallel_load(stale, _read(directory, context, known), parallel=parallel):
        if context.notes is not None:
            context.notes.extend(notes)
        if isinstance(result, PolicyError):
            problems.extend(result.problems)
        elif result is None:
            candidates[name] = (seen[name], read_digest, kept[name][2])
        else:
            fresh[name] = result
            candidates[name] = (seen[name], read_digest, result)
    for name in seen:
        if name not in candidates and name in kept:
            candidates[name] = kept[name]  # unchanged, or refused on a reload: its last good policy
    candidates = {name: candidates[name] for name in seen if name in candidates}  # in file order
    problems.extend(_resolve_claims(candidates, kept, fresh, strict=previous is None))
    if previous is None and problems:
        raise PolicyError(problems)
    if not candidates:
        raise PolicyError(problems or [PolicyProblem(str(directory), "", "holds no policy files (*.yaml)")])
    return LoadedSet(seen, candidates, tuple(problems), len(fresh))


def _resolve_claims(
    candidates: dict[str, tuple[Stamp, Digest, Tenant]], kept: Loaded, fresh: Mapping[str, Tenant], *, strict: bool
) -> list[PolicyProblem]:
    """Each tenant id and number owned by one file. A new version that claims what another
    file holds is refused (the older claim wins: the file that had it, else the first name);
    on a reload it falls back to its last good version, which may free or take other claims,
    so this repeats until no file changes. Changes `candidates` in place."""
    problems: list[PolicyProblem] = []
    while True:
        losers: dict[str, None] = {}
        ids: dict[str, str] = {}
        owners: dict[str, str] = {}
        # Old versions first: what a file held before is its own until it lets it go.
        order = sorted(candidates, key=lambda name: (name in fresh and candidates[name][2] is fresh[name], name))
        for name in order:
            tenant = candidates[name][2]
            if tenant.id in ids:
                problems.append(PolicyProblem(name, "", f"tenant {tenant.id!r} is also defined by {ids[tenant.id]}"))
                losers[name] = None
                continue
            clashes = [n for n in sorted(tenant.numbers) if n in owners]
            for number in clashes:
                problems.append(PolicyProblem(name, "numbers", f"{number} is already owned by {owners[number]}"))
            if clashes:
                losers[name] = None
                continue
            ids[tenant.id] = name
            owners.update(dict.fromkeys(tenant.numbers, name))
        if strict or not losers:
            return problems
        for name in losers:
            if name in kept and candidates[name] is not kept[name]:
                candidates[name] = kept[name]
            else:
                del candidates[name]


def load_dir(directory: Path, context: LoadContext) -> dict[str, Tenant]:
    """Every policy file in `directory`; all problems of all files in one PolicyError."""
    with heap.paused():
        loaded = load_set(directory, context, parallel=True).loaded
    return {tenant.id: tenant for _, _, tenant in loaded.values()}
