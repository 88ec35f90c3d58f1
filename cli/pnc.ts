#!/usr/bin/env -S node --import tsx
// The `pnc` executable; the command line itself is cli/main.ts.
import "./main.ts";
