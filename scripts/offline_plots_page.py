"""Write .dvc/plots/offline.html: DVC's plots page with vega, vega-lite and vega-embed inlined.

DVC's default page loads these from a CDN, so `dvc plots show` is blank offline. Fetch the same
versions DVC's dvc-render uses from the npm registry, unpack them and run this once:

    npm pack vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2
    for f in *.tgz; do tar xzf $f --one-top-level=${f%.tgz}; done
    python scripts/offline_plots_page.py <folder holding the unpacked packages>
"""

import sys
from pathlib import Path

PACKAGES = [
    ("vega", "5.20.2", "vega.min.js"),
    ("vega-lite", "5.2.0", "vega-lite.min.js"),
    ("vega-embed", "6.18.2", "vega-embed.min.js"),
]


def main(root: str) -> None:
    folders = [Path(root) / f"{name}-{version}" / "package" for name, version, _ in PACKAGES]
    licenses = [(folder / "LICENSE").read_text().strip().split("\n", 1) for folder in folders]
    bodies = {body.strip() for _, body in licenses}
    if len(bodies) != 1:
        sys.exit("the three licenses differ; list each in full")
    copyrights = "\n".join(
        f"{name} {version}: {copyright_line}"
        for (name, version, _), (copyright_line, _) in zip(PACKAGES, licenses, strict=True)
    )
    scripts = "\n".join(
        f"<script>/* {name} {version} */\n{(folder / 'build' / js).read_text()}\n</script>"
        for (name, version, js), folder in zip(PACKAGES, folders, strict=True)
    )
    notice = f"{copyrights}\n\n{bodies.pop()}".replace("--", "- -")  # "--" may not appear in an HTML comment
    page = f"""<!DOCTYPE html>
<!-- DVC plots page that renders offline: the vega, vega-lite and vega-embed builds that DVC's default
     page loads from a CDN are inlined here (same versions), by scripts/offline_plots_page.py.
     Their license (BSD-3-Clause, the same text for all three):

{notice}
-->
<html>
<head>
    {{refresh_tag}}
    <title>atarirep plots</title>
    {scripts}
    <style>
        table {{ border-spacing: 15px; }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""
    Path(".dvc/plots/offline.html").write_text(page)


if __name__ == "__main__":
    main(sys.argv[1])
