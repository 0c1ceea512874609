"""Checking a DVC remote before push or pull: one line naming what is wrong and how to fix it.

`dvc push` to an S3 remote with a wrong key, a stopped server or a missing bucket retries, then prints a
traceback-like wall or a generic "failed to push"; this module asks the remote once, with a short timeout
and no retries, and says which of those it is:

    python -m atarirep.plumbing.remote check [-r NAME]                 # the default remote unless -r
    python -m atarirep.plumbing.remote push [-r NAME] [dvc push args]  # check, then `dvc push`
    python -m atarirep.plumbing.remote pull [-r NAME] [dvc pull args]  # check, then `dvc pull`

The remote's options are read through DVC (every config level merged, `--local` included), so the check
sees what `dvc push` will use. S3 remotes (AWS, MinIO, SeaweedFS, ...) and local folders are checked;
other kinds only for being configured. Credentials in the committed `.dvc/config` are refused.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from atarirep.plumbing.errors import UserError, run_stage

CONNECT_TIMEOUT = 3  # seconds; a check waits this long for a silent endpoint, once
READ_TIMEOUT = 10
# Options that must never be in .dvc/config, which git commits.
SECRETS = (
    "access_key_id",
    "secret_access_key",
    "session_token",
    "password",
    "account_key",
    "sas_token",
    "connection_string",
    "sse_customer_key",
)
CREDENTIALS_FIX = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or `dvc remote modify --local {name} "
    "access_key_id ...` and `dvc remote modify --local {name} secret_access_key ...`"
)
# Codes an S3 server answers for credentials it does not accept (as opposed to a key lacking permission).
BAD_CREDENTIALS = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "InvalidClientTokenId",
    "AuthorizationHeaderMalformed",
}


def check(root: str | Path = ".", name: str | None = None) -> str:
    """Check remote `name` (the default remote if None) of the DVC repository at or above `root`.

    Returns one line saying what was checked; raises UserError naming the problem and the fix.
    """
    from dvc.exceptions import DvcException, NotDvcRepoError
    from dvc.repo import Repo

    try:
        repo = Repo(str(root))
    except NotDvcRepoError:
        raise UserError(
            f"{Path(root).resolve()} is not in a DVC repository; run this from the project's folder"
        ) from None
    except DvcException as err:
        raise UserError(f"cannot read the DVC config: {err}; fix it with `dvc remote modify` or `dvc config`") from None
    with repo:
        name = _remote_name(repo, name)
        _refuse_committed_secrets(repo, name)
        from dvc.fs import get_cloud_fs

        try:
            cls, conf, path = get_cloud_fs(repo.config, name=name)
        except ImportError as err:  # e.g. "s3 is supported, but requires 'dvc-s3' to be installed"
            raise UserError(f"remote '{name}': {err}; `pip install -e \".[s3]\"` installs it") from None
        except DvcException as err:
            raise UserError(
                f"remote '{name}' is misconfigured: {err}; see `dvc remote list` and fix it with "
                f"`dvc remote modify {name} ...`"
            ) from None
        url = repo.config["remote"][name]["url"]
        if cls.protocol == "s3":
            return _check_s3(repo, name, url, cls(**conf).fs_args, path)
        if cls.protocol == "local":
            return _check_local(name, Path(path))
        return f"remote '{name}' ({url}) is configured; only S3 and local remotes are checked further"


def _remote_name(repo, name: str | None) -> str:
    remotes = sorted(repo.config["remote"])
    add = "`dvc remote add -d shared s3://bucket/path` (docs/sharing.md)"
    if name is None:
        name = repo.config["core"].get("remote")
        if name is None:
            raise UserError(
                f"no default DVC remote is set (configured: {', '.join(remotes) or 'none'}); "
                f"pass -r NAME, make one the default with `dvc remote default NAME`, or add one: {add}"
            )
    if name.lower() not in repo.config["remote"]:
        raise UserError(
            f"DVC remote '{name}' is not configured (configured: {', '.join(remotes) or 'none'}); "
            f"add it with {add.replace('-d shared', name)} or pick another with -r NAME"
        )
    return name.lower()


def _refuse_committed_secrets(repo, name: str) -> None:
    committed = repo.config.load_one("repo").get("remote", {}).get(name, {})
    found = [key for key in SECRETS if key in committed]
    if found:
        key = found[0]
        raise UserError(
            f"remote '{name}' has {key} in .dvc/config, which git commits; move it out: "
            f"`dvc remote modify {name} --unset {key}` then `dvc remote modify --local {name} {key} ...` "
            "(or use the AWS_* environment variables), and rotate it if it was ever committed"
        )


def _check_local(name: str, path: Path) -> str:
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise UserError(
            f"remote '{name}' is the folder {path}, but {existing} is a file; point it at a folder: "
            f"`dvc remote modify {name} url /path/to/folder`"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(
            f"remote '{name}': folder {existing} is not writable; fix its permissions or point the "
            f"remote elsewhere: `dvc remote modify {name} url /path/to/folder`"
        )
    state = "exists" if existing == path else "will be created by `dvc push`"
    return f"remote '{name}' is the folder {path}, which {state}"


def _check_s3(repo, name: str, url: str, args: dict, path: str) -> str:
    import botocore.exceptions as boto
    import botocore.session
    from botocore import UNSIGNED
    from botocore.config import Config

    bucket, _, prefix = path.partition("/")
    client_kwargs = args.get("client_kwargs", {})
    endpoint = client_kwargs.get("endpoint_url")
    where = f"endpoint {endpoint}" if endpoint else "AWS S3"
    config = Config(
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
        retries={"total_max_attempts": 1},
        s3=args.get("config_kwargs", {}).get("s3") or None,
        **({"signature_version": UNSIGNED} if args.get("anon") else {}),
    )
    try:
        session = botocore.session.Session(profile=args.get("profile"))
        if not args.get("anon") and not args.get("key") and session.get_credentials() is None:
            raise UserError(f"remote '{name}' ({url}) has no credentials; " + CREDENTIALS_FIX.format(name=name))
        client = session.create_client(
            "s3",
            region_name=client_kwargs.get("region_name"),
            endpoint_url=endpoint,
            verify=client_kwargs.get("verify"),
            use_ssl=args.get("use_ssl", True),
            config=config,
            aws_access_key_id=args.get("key"),
            aws_secret_access_key=args.get("secret"),
            aws_session_token=args.get("token"),
        )
        client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
    except boto.ProfileNotFound:
        raise UserError(
            f"remote '{name}' uses the AWS profile '{args.get('profile')}', which ~/.aws/config does not "
            f"define; add it or `dvc remote modify --local {name} --unset profile`"
        ) from None
    except boto.SSLError as err:
        raise UserError(
            f"remote '{name}': TLS to {where} failed ({err}); for a private CA "
            f"`dvc remote modify --local {name} ssl_verify /path/to/ca.pem`"
        ) from None
    except (boto.EndpointConnectionError, boto.ConnectTimeoutError, boto.ReadTimeoutError) as err:
        how = {
            boto.ConnectTimeoutError: f"no connection within {CONNECT_TIMEOUT} s",
            boto.ReadTimeoutError: f"connected, but no reply within {READ_TIMEOUT} s",
        }.get(type(err), "refused")
        fix = (
            f"start the server or fix the address: `dvc remote modify {name} endpointurl http://HOST:PORT`"
            if endpoint
            else "check the network connection"
        )
        raise UserError(f"remote '{name}' ({url}): {where} does not answer ({how}); {fix}") from None
    except boto.ClientError as err:
        code = err.response.get("Error", {}).get("Code", "")
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        source = _credential_source(repo, name, session, args)
        if code in BAD_CREDENTIALS or (status == 403 and code in ("", "403")):
            raise UserError(
                f"remote '{name}' ({url}): {where} refused the credentials ({code or status}; they come "
                f"from {source}); " + CREDENTIALS_FIX.format(name=name)
            ) from None
        if code in ("NoSuchBucket", "404") or status == 404:
            mb = f"aws s3 mb s3://{bucket}" + (f" --endpoint-url {endpoint}" if endpoint else "")
            raise UserError(
                f"remote '{name}' ({url}): bucket '{bucket}' does not exist at {where}; create it "
                f"(`{mb}`, or the server's console) or fix the url: "
                f"`dvc remote modify {name} url s3://BUCKET/PATH`"
            ) from None
        if code == "AccessDenied" or status == 403:
            raise UserError(
                f"remote '{name}' ({url}): the credentials (from {source}) may not list bucket "
                f"'{bucket}' ({code}); grant them s3:ListBucket, s3:GetObject and s3:PutObject on it, "
                f"or use other ones: " + CREDENTIALS_FIX.format(name=name)
            ) from None
        raise UserError(
            f"remote '{name}' ({url}): {where} answered {status} {code}: "
            f"{err.response.get('Error', {}).get('Message', '')}; check the remote's settings "
            f"(`dvc remote list`, `dvc config --list --show-origin`)"
        ) from None
    except boto.BotoCoreError as err:
        raise UserError(
            f"remote '{name}' ({url}): talking S3 to {where} failed ({err}); check the endpoint "
            f"(`dvc remote modify {name} endpointurl ...`) and the credentials"
        ) from None
    return f"remote '{name}' ({url}) at {where}: answers, accepts the credentials, bucket '{bucket}' exists"


def _credential_source(repo, name: str, session, args: dict) -> str:
    """Where the key that was sent comes from, so the fix lands in the right place."""
    if args.get("key") or args.get("secret"):
        for level in ("local", "global", "system"):
            if {"access_key_id", "secret_access_key"} & set(
                repo.config.load_one(level).get("remote", {}).get(name, {})
            ):
                return f"`dvc remote modify --{level} {name}` ({repo.config.files[level]})"
        return f"remote '{name}''s DVC config"
    credentials = session.get_credentials()
    method = credentials.method if credentials else None
    return {
        "env": "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in the environment",
        "shared-credentials-file": "~/.aws/credentials (AWS_SHARED_CREDENTIALS_FILE)",
        "config-file": "~/.aws/config (AWS_CONFIG_FILE)",
    }.get(method or "", f"botocore's {method} provider")


def main(*argv: str) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m atarirep.plumbing.remote", description="Check a DVC remote; push and pull check it first."
    )
    parser.add_argument("command", choices=("check", "push", "pull"))
    parser.add_argument("-r", "--remote", help="remote name (default: DVC's default remote)")
    args, rest = parser.parse_known_args(argv)
    if rest and args.command == "check":
        parser.error(f"check takes no other arguments: {' '.join(rest)}")
    print(check(".", args.remote), flush=True)
    if args.command != "check":
        from dvc.cli import main as dvc

        code = dvc([args.command, *(["-r", args.remote] if args.remote else []), *rest])
        if code:
            raise SystemExit(code)


if __name__ == "__main__":
    run_stage(main)
