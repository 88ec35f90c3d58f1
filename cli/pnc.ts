#!/usr/bin/env -S node --import tsx
// The `pnc` executable. The command line itself is cli/main.ts: tsx cannot read a file that
// has both a shebang and dynamic imports.
import "./main.ts";
