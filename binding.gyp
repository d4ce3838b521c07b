{
  "targets": [
    {
      "target_name": "rlkernels",
      "sources": [
        "<!@(node -p \"['native/cpu','native/addon'].flatMap(d=>require('fs').readdirSync(d).filter(f=>f.endsWith('.cc')).map(f=>d+'/'+f)).join(' ')\")"
      ],
      "include_dirs": ["<!@(node -p \"require('node-addon-api').include\")", "native/include"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"],
      "cflags_cc": ["-std=c++17", "-O3", "-fexceptions", "-fno-math-errno", "-fvisibility=hidden"],
      "cflags": ["-O3"]
    }
  ]
}
