"""``qkd-hil kme ...``: serve a KME, make Curve keys and lab certificates, verify the audit log."""

from __future__ import annotations

import argparse
import os
import sys

from kms_bridge.config import ConfigError


class _UsageError(ValueError):
    exit_code = 2


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("kme", help="key management entity: ETSI 014 service, bridge, audit")
    ksub = p.add_subparsers(dest="kme_command", metavar="KME_COMMAND")
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])

    s = ksub.add_parser("serve", help="run one KME (bridge + ETSI GS QKD 014 over mutual TLS)")
    s.add_argument("--config", required=True, help="KME config file (YAML, see docs/kms.md)")
    s.set_defaults(func=_serve)

    k = ksub.add_parser("keygen", help="make a CurveZMQ key pair for a bridge end")
    k.add_argument("name", help="key name: writes NAME.key (public) and NAME.key_secret")
    k.add_argument("--out", default=".", help="output directory (default .)")
    k.set_defaults(func=_keygen)

    c = ksub.add_parser("certs", help="make a lab CA with KME and SAE certificates")
    c.add_argument("--out", required=True, help="output directory")
    c.add_argument("--kme", action="append", default=[], help="KME name (server cert), repeatable")
    c.add_argument("--sae", action="append", default=[], help="SAE ID (client cert CN), repeatable")
    c.set_defaults(func=_certs)

    a = ksub.add_parser("audit", help="audit log tools")
    asub = a.add_subparsers(dest="audit_command", metavar="AUDIT_COMMAND")
    a.set_defaults(func=lambda _: (a.print_help(), 2)[1])
    v = asub.add_parser("verify", help="verify the hash chain of a KME's audit log")
    g = v.add_mutually_exclusive_group(required=True)
    g.add_argument("--config", help="KME config file (uses its data_dir)")
    g.add_argument("--db", help="KME database file (kme.sqlite)")
    v.set_defaults(func=_audit_verify)


def _serve(args: argparse.Namespace) -> int:
    import logging

    from kms_bridge.config import load_config
    from kms_bridge.kme import serve

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    cfg = load_config(args.config)
    print(f"KME {cfg.kme_id}: bridge {cfg.bridge_bind}, https {cfg.http_host}:{cfg.http_port}")
    return serve(cfg)


def _keygen(args: argparse.Namespace) -> int:
    from kms_bridge.pki import curve_keypair

    if os.path.exists(os.path.join(args.out, f"{args.name}.key_secret")):
        raise _UsageError(f"{args.out}/{args.name}.key_secret exists; refusing to overwrite")
    pub, sec = curve_keypair(args.out, args.name)
    print(f"public: {pub}\nsecret: {sec}")
    return 0


def _certs(args: argparse.Namespace) -> int:
    from kms_bridge.pki import make_lab_pki

    if not args.kme and not args.sae:
        raise _UsageError("give at least one --kme or --sae")
    if os.path.exists(os.path.join(args.out, "ca.key")):
        raise _UsageError(f"{args.out}/ca.key exists; refusing to overwrite a CA")
    for name, paths in make_lab_pki(args.out, args.kme, args.sae).items():
        print(f"{name}: {paths.cert} {paths.key}")
    return 0


def _audit_verify(args: argparse.Namespace) -> int:
    from kms_bridge.audit import verify_file

    if args.config:
        from kms_bridge.config import load_config

        db = load_config(args.config).db_path
    else:
        db = args.db
    if not os.path.exists(db):
        raise ConfigError(f"no KME database at {db}")
    res = verify_file(db)
    if res.ok:
        print(f"audit chain OK: {res.records} records ({db})")
        return 0
    print(
        f"audit chain BROKEN at record {res.first_bad_seq}: {res.reason} "
        f"({res.records} records verified before it; {db})",
        file=sys.stderr,
    )
    return 1
