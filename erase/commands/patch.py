"""`erase patch apply BASE PATCH OUT`: rebuild an erased SD folder from its base and an erasure patch."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser("patch", help="erasure patches: the changed UNet weights, apart from the base")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    apply = actions.add_parser("apply", help="apply PATCH to BASE and write the erased diffusers folder OUT")
    apply.add_argument("base", metavar="BASE", help="the base SD folder or hub id the patch was made from")
    apply.add_argument("patch", metavar="PATCH", help="patch.safetensors written by `erase sd`")
    apply.add_argument("out", metavar="OUT", help="folder for the erased pipeline")
    apply.set_defaults(func=run_apply)


def run_apply(args) -> int:
    from erase.commands.common import require
    from erase.core.io import check_output_folder
    from erase.families import sd
    from erase.patch import apply_patch, read_patch

    out = check_output_folder(args.out, "OUT")
    tensors, metadata = read_patch(args.patch)
    require(metadata.get("component") == "unet", f"{args.patch} patches {metadata.get('component')!r}, not a UNet")
    base_folder = sd.resolve_model(args.base)
    require(out.resolve() != base_folder.resolve(), "OUT must differ from BASE")
    state = apply_patch(sd.read_unet_state(base_folder), tensors, metadata)
    sd.export_pipeline(base_folder, state, out)
    print(f"patched {metadata['changed']} of {metadata['total']} UNet weights of {args.base} -> {out}")
    return 0
