"""`fedhub provenance ...`: list, show, export and verify the hub's provenance ledger.

`verify` downloads the chain (the caller's records whole, others' as signed skeletons,
the signed head, the hub's public key) and checks it here, with the same pure function
the hub uses: a caller need not trust the hub's own answer. Pin the key you expect
with --key-id to notice a swapped key.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import requests


def _get(args, path: str, **params):
    base, headers = args.hub_api(args)
    return requests.get(f"{base}/services/fedhub/api/provenance{path}", headers=headers,
                        params=params, timeout=60)


def _fail(args, what: str, r: requests.Response) -> int:
    print(f"fedhub provenance {what}: {r.status_code}: {args.error_message(r)}", file=sys.stderr)
    return 1


def cmd_ls(args) -> int:
    params = {k: v for k, v in (("kind", args.kind), ("subject", args.subject)) if v}
    r = _get(args, "", **params)
    if r.status_code != 200:
        return _fail(args, "ls", r)
    recs = r.json()["records"]
    if args.json:
        print(json.dumps(recs, indent=1))
        return 0
    print(f"{'SEQ':>5}  {'WHEN (UTC)':<20}{'KIND':<12}{'WHO':<12}{'SUBJECT':<28}HASH")
    for rec in recs:
        when = datetime.fromtimestamp(rec["time"], timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        print(f"{rec['seq']:>5}  {when:<20}{rec['kind']:<12}{rec['who']:<12}{rec['subject'][:27]:<28}{rec['hash'][:16]}")
    return 0


def cmd_show(args) -> int:
    r = _get(args, f"/{args.ref}", format="prov" if args.prov else "json")
    if r.status_code != 200:
        return _fail(args, "show", r)
    print(json.dumps(r.json(), indent=1))
    return 0


def cmd_verify(args) -> int:
    # the verifier is pure data + cryptography: the same function the hub runs
    from fedhub.hub.ledger import load_public_key, verify

    r = _get(args, "/chain")
    if r.status_code != 200:
        return _fail(args, "verify", r)
    chain = r.json()
    if args.key_id and chain["key_id"] != args.key_id:
        print(f"fedhub provenance verify: the hub signs with key {chain['key_id']}, not {args.key_id}",
              file=sys.stderr)
        return 4
    problems = verify(chain["records"], load_public_key(chain["public_key"]), chain["head"])
    own = sum(1 for rec in chain["records"] if "body" in rec and rec.get("body") is not None)
    if args.json:
        print(json.dumps({"ok": not problems, "records": len(chain["records"]), "checked_whole": own,
                          "key_id": chain["key_id"], "problems": [p.to_dict() for p in problems]}, indent=1))
    elif problems:
        for p in problems:
            print(f"TAMPERED  {p.kind:<10} {p.message}")
    else:
        print(f"ok: {len(chain['records'])} records chained and signed by key {chain['key_id']} "
              f"({own} of yours checked whole)")
    return 3 if problems else 0


def build_crate(records: list[dict], prov: dict, chain: dict, workdir: Path):
    """An RO-Crate of ledger records: the records (JSON lines), their PROV JSON-LD, the
    hub's public key and signed head as files, and each record as a CreateAction."""
    from rocrate.model.contextentity import ContextEntity
    from rocrate.rocrate import ROCrate

    files = {"records.jsonl": "\n".join(json.dumps(r, sort_keys=True) for r in records) + "\n",
             "prov.jsonld": json.dumps(prov, indent=1), "hub-public-key.pem": chain["public_key"],
             "ledger-head.json": json.dumps(chain["head"])}
    crate = ROCrate()
    crate.name = f"fedhub provenance: {len(records)} record(s)"
    crate.description = ("Signed, hash-chained provenance records exported from a fedhub hub; "
                         "verify them with `fedhub provenance verify` or fedhub.hub.ledger.verify().")
    for name, text in files.items():
        path = workdir / name
        path.write_text(text)
        crate.add_file(path, name, properties={
            "encodingFormat": "application/ld+json" if name.endswith("jsonld") else "text/plain",
            "sha256": hashlib.sha256(text.encode()).hexdigest()})
    for r in records:
        agent = crate.add(ContextEntity(crate, f"#user-{r['who']}", properties={
            "@type": "Person", "name": r["who"]}))
        result = crate.add(ContextEntity(crate, f"#{r['kind']}-{r['subject']}", properties={
            "@type": "Thing", "name": f"{r['kind']} {r['subject']}"}))
        action = crate.add(ContextEntity(crate, f"#record-{r['hash'][:16]}", properties={
            "@type": "CreateAction", "name": f"{r['kind']} {r['subject']}",
            "endTime": datetime.fromtimestamp(r["time"], timezone.utc).isoformat(),
            "identifier": r["hash"], "description": json.dumps(r["body"], sort_keys=True)[:2000]}))
        action["agent"] = agent
        action["result"] = result
    return crate


def cmd_export(args) -> int:
    r = _get(args, f"/{args.ref}")
    if r.status_code != 200:
        return _fail(args, "export", r)
    prov = _get(args, f"/{args.ref}", format="prov").json()
    chain = _get(args, "/chain").json()
    lineage_ids = {n.get("fedhub:hash") for n in prov["@graph"] if "fedhub:hash" in n}
    records = [rec for rec in chain["records"] if rec.get("hash") in lineage_ids and "body" in rec]
    with tempfile.TemporaryDirectory() as tmp:
        crate = build_crate(records, prov, chain, Path(tmp))
        out = Path(args.out)
        if out.suffix == ".zip":
            crate.write_zip(str(out))
        else:
            crate.write(str(out))
    print(f"{out}: RO-Crate of {len(records)} record(s)")
    return 0


def add_commands(sub, hub_api, error_message) -> None:
    p = sub.add_parser("provenance", help="the signed provenance ledger: ls, show, verify, export")
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1], hub_api=hub_api, error_message=error_message)
    cmds = p.add_subparsers(dest="provenance_command")
    q = cmds.add_parser("ls", help="your provenance records")
    q.add_argument("--kind", choices=["session", "run", "job", "deployment"])
    q.add_argument("--subject", help="only records of this run, job, deployment or session")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_ls)
    q = cmds.add_parser("show", help="one record (hash or an 8+ character prefix)")
    q.add_argument("ref")
    q.add_argument("--prov", action="store_true", help="as W3C PROV JSON-LD, with its lineage")
    q.set_defaults(func=cmd_show)
    q = cmds.add_parser("verify", help="check the whole ledger's chain and signatures here "
                        "(exit 0 intact, 3 tampered, 4 unexpected key)")
    q.add_argument("--key-id", help="the hub key id you expect (see a previous verify)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_verify)
    q = cmds.add_parser("export", help="a record and its lineage as an RO-Crate (directory, or .zip)")
    q.add_argument("ref")
    q.add_argument("--out", required=True, help="crate.zip, or a directory")
    q.set_defaults(func=cmd_export)
