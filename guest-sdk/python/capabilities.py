"""Prints the capabilities (`state`, `client`, `http`, …) a plugin uses, one per line, for
build.sh to build it against a world that imports those and no others
(componentize-py imports every interface of its world, used or not).

    python3 capabilities.py APP_DIR MODULE SDK_DIR

A plugin uses `state` when it imports `sluice_plugin.state`, directly or
through its own modules: `modulefinder` follows the imports of the app's
bytecode (wherever they are, functions included) without running it.
Only the app's folder and the SDK are searched: the standard library and
the generated bindings are not needed to answer.
"""

import modulefinder
import os
import sys

app_dir, module, sdk = sys.argv[1:4]
finder = modulefinder.ModuleFinder(path=[app_dir, sdk])
finder.run_script(os.path.join(app_dir, module + ".py"))
# `metrics` is no capability (no grant), but is imported only when used too.
for capability in ["state", "client", "metrics", "http"]:
    if f"sluice_plugin.{capability}" in finder.modules:
        print(capability)
# Not a capability: the `manifest` export, when the app defines `Manifest`.
if "Manifest" in finder.modules["__main__"].globalnames:
    print("manifest")
