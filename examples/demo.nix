# The `make demo` build: 34 tiny derivations (builder = /bin/sh, no nixpkgs) shaped like a
# small release, with work that only some builders may take:
#
#   16 libraries          any builder
#    4 heavy components   requiredSystemFeatures = [ "big-parallel" ]
#    4 aarch64 ports      system = "aarch64-linux" (the farm's b2 lists it in extra-platforms;
#                         on this one x86_64 machine the "port" is still run by /bin/sh)
#    3 benchmarks         requiredSystemFeatures = [ "benchmark" ] (b3's mandatory feature)
#    6 applications       any builder, depend on heavy components and ports
#    1 release            depends on everything above
#
# Each build sleeps a little so that the builders visibly work in parallel.
{ salt ? "demo", work ? "0.5" }:
let
  sys = builtins.currentSystem;
  mk = { name, system ? sys, features ? [ ], deps ? [ ] }: derivation {
    inherit name system salt deps;
    PATH = "/usr/bin:/bin";
    requiredSystemFeatures = features;
    builder = "/bin/sh";
    args = [ "-c" ''
      echo "building $name on $(cat /etc/nix/nixdist-builder 2>/dev/null || echo this machine)"
      sleep ${work}
      mkdir "$out"
      echo "$name $salt" > "$out/id"
      for d in $deps; do cat "$d/id"; done > "$out/inputs"
    '' ];
  };
  range = n: f: builtins.genList f n;
  pick = list: i: builtins.elemAt list (i - (i / builtins.length list) * builtins.length list);
  libs = range 16 (i: mk { name = "lib-${toString i}"; });
  heavy = range 4 (i: mk {
    name = "heavy-${toString i}";
    features = [ "big-parallel" ];
    deps = [ (pick libs (4 * i)) (pick libs (4 * i + 1)) ];
  });
  ports = range 4 (i: mk {
    name = "port-aarch64-${toString i}";
    system = "aarch64-linux";
    deps = [ (pick libs (4 * i + 2)) ];
  });
  benches = range 3 (i: mk {
    name = "bench-${toString i}";
    features = [ "benchmark" ];
    deps = [ (pick heavy i) ];
  });
  apps = range 6 (i: mk {
    name = "app-${toString i}";
    deps = [ (pick heavy i) (pick ports i) (pick libs (i + 10)) ];
  });
in
mk { name = "release"; deps = apps ++ benches ++ libs; }
