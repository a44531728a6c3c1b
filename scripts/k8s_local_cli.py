"""scripts/k8s-local's verbs and options: the parser and one small function a verb."""
from __future__ import annotations

import argparse
import os
import time

import k8s_local_layout as L
from k8s_local_components import status, status_json, status_lines
from k8s_local_down import find_leftovers, teardown
from k8s_local_images import LOADED, build_images, check_names, image_specs, load_images
from k8s_local_install import install
from k8s_local_net import sysctl_values
from k8s_local_procs import live_pid
from k8s_local_up import up
from local_common import Fail, info, print_leftovers


def cmd_install(args):
    install(packages_only=args.packages_only)


def cmd_prefetch(args):
    """install, then build the images: what `up` and `images` would do first, without a cluster."""
    install()
    build_images(list(image_specs()))


def cmd_up(args):
    up()


def cmd_status(args):
    st = status(live_pid)
    print(status_json(st) if args.json else "\n".join(status_lines(st)))
    return 0 if all(c["pid"] for c in st["components"]) else 3


def cmd_kubectl(args):
    if not L.KUBECONFIG.exists():
        raise Fail("no cluster is up (`k8s-local up`)")
    kc = L.kube_bin("kubectl")
    os.execv(str(kc), [str(kc), "--kubeconfig", str(L.KUBECONFIG), *args.args])


def cmd_ctr(args):
    if not L.CONTAINERD_SOCK.exists():
        raise Fail("no cluster is up (`k8s-local up`)")
    os.execvp("ctr", ["ctr", "--address", str(L.CONTAINERD_SOCK), "--namespace", "k8s.io", *args.args])


def containerd_running():
    return L.CONTAINERD_SOCK.exists() and live_pid("containerd")


def cmd_images(args):
    L.require_root()
    known = list(image_specs())
    wanted = args.names or known
    check_names(wanted, known)
    build_images(wanted)
    if containerd_running():
        load_images([n for n in LOADED if n in wanted])


def cmd_load(args):
    if not containerd_running():
        raise Fail("containerd is not running (`k8s-local up` first)")
    load_images(args.names or LOADED)


def cmd_down(args):
    L.require_root()
    t0 = time.monotonic()
    teardown()
    left = find_leftovers()
    if left:
        raise Fail(f"after down, still there: {'; '.join(left[:8])}")
    info(f"down in {time.monotonic() - t0:.1f}s: nothing left (processes, mounts, cgroups, links, rules, the address, "
         f"host files, sysctls)")


def cmd_leftovers(args):
    return print_leftovers(find_leftovers, args.wait)


def cmd_sysctls(args):
    for key, value in sysctl_values().items():
        print(f"{key}={value}")


def build_parser(description):
    p = argparse.ArgumentParser(prog="k8s-local", description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    s = sub.add_parser("install", help="install the packages and build the binaries (once)")
    s.add_argument("--packages-only", action="store_true", help="the Debian packages only (make fresh-check)")
    s.set_defaults(func=cmd_install)
    s = sub.add_parser("prefetch", help="install, then build the images (no cluster; `make test` runs it in the "
                                        "background)")
    s.set_defaults(func=cmd_prefetch)
    s = sub.add_parser("up", help="start the cluster (installs first); returns when the node is Ready")
    s.set_defaults(func=cmd_up)
    s = sub.add_parser("down", help="stop the cluster and remove every trace of it")
    s.set_defaults(func=cmd_down)
    s = sub.add_parser("status", help="one line per component (exit 3 if one is down)")
    s.add_argument("--json", action="store_true",
                   help='for programs: {"components": [{"name", "pid", "state"}], "node": {"name", "ready"}}; '
                        "ready is null while a component is down (same exit codes)")
    s.set_defaults(func=cmd_status)
    s = sub.add_parser("images", help="build the images (cached by their inputs) and load them if the cluster is up")
    s.add_argument("names", nargs="*", metavar="NAME", help="pause, debian, python, kchat, kafka (default: all)")
    s.set_defaults(func=cmd_images)
    s = sub.add_parser("load", help="import the built images into containerd")
    s.add_argument("names", nargs="*", metavar="NAME", help="pause, kchat, kafka (default: all)")
    s.set_defaults(func=cmd_load)
    s = sub.add_parser("leftovers", help="list what of a cluster is still on the machine (exit 1 if anything)")
    s.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="look again for up to SECONDS while anything is found (what the kernel releases late)")
    s.set_defaults(func=cmd_leftovers)
    s = sub.add_parser("sysctls", help="print every sysctl that up or the kubelet changes (key=value)")
    s.set_defaults(func=cmd_sysctls)
    for name in ("kubectl", "ctr"):  # handled in main(): every argument goes to the tool
        sub.add_parser(name, help=f"the cluster's {name} (arguments passed on)", add_help=False)
    return p


def main(argv, description):
    passthrough = {"kubectl": cmd_kubectl, "ctr": cmd_ctr}
    if argv and argv[0] in passthrough:
        args = argparse.Namespace(func=passthrough[argv[0]], args=argv[1:])
    else:
        args = build_parser(description).parse_args(argv)
    return args.func(args)
