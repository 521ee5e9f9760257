"""Generator families: one record per family (:class:`Family`) that the zoo, the CLI, the demo, training
and the pipeline read instead of switching on the family's name.

This package sits above :mod:`argen.convert` and :mod:`argen.generators` (a record names the loaders
and the model classes) and below everything that reads it. Importing it registers the built-in
families; another one registers with :func:`register_family` from its own module.

    fam = get_family("var")
    fam.kind, fam.tokenizer_kind                # 'scale', 'multiscale'
"""
from argen.families import dd, elm, elm_mlm, flowar, igpt, llamagen, mar, var
from argen.families.registry import (
    Arg,
    Family,
    arg,
    families,
    family_for_tokenizer,
    family_of,
    get_family,
    register_family,
    student_family,
    unregister_family,
)

# the order is that of `argen convert` and `--kind`; the first family of a tokenizer kind is its default
for _family in (llamagen.FAMILY, var.FAMILY, mar.FAMILY, flowar.FAMILY, dd.DD_LLAMAGEN, dd.DD_VAR, igpt.FAMILY,
                elm.FAMILY, elm_mlm.FAMILY):
    register_family(_family)

__all__ = ["Arg", "Family", "arg", "families", "family_for_tokenizer", "family_of", "get_family", "register_family",
           "student_family", "unregister_family"]
