/// `GET /dashboard`: one self-contained page (no build step, no external assets) that reads
/// `/v1/fleet` and `/v1/devices` and refreshes every 10 s.
enum Dashboard {
    static let html = """
        <!doctype html>
        <html lang="en">
        <head>
        <meta charset="utf-8">
        <title>upgrade fleet</title>
        <style>
        body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
        h1 { font-size: 1.4em; margin: 0 0 .2em; } h2 { font-size: 1.1em; margin: 1.4em 0 .4em; }
        table { border-collapse: collapse; min-width: 40em; }
        th, td { text-align: left; padding: .25em .8em; border-bottom: 1px solid #ddd; }
        th { background: #f4f4f4; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
        .halted { color: #b00; font-weight: bold; } .bad { color: #b00; } .muted { color: #777; }
        .bar { display: inline-block; height: .8em; background: #3a7; vertical-align: middle; }
        .track { display: inline-block; width: 10em; background: #eee; margin-right: .5em; }
        </style>
        </head>
        <body>
        <h1>upgrade fleet</h1>
        <div id="status" class="muted">loading…</div>
        <h2>Releases</h2>
        <table id="releases"><thead><tr><th>product</th><th>release</th><th>devices</th><th>failing</th>
        <th>first attempts</th><th>failures</th><th>state</th></tr></thead><tbody></tbody></table>
        <h2>Rollouts</h2>
        <table id="channels"><thead><tr><th>product</th><th>channel</th><th>release</th><th>rollout</th>
        <th>progress</th></tr></thead><tbody></tbody></table>
        <h2>Failures</h2>
        <table id="failures"><thead><tr><th>device</th><th>runs</th><th>tried</th><th>result</th><th>reason</th>
        <th>when</th></tr></thead><tbody></tbody></table>
        <h2>Devices</h2>
        <table id="devices"><thead><tr><th>device</th><th>product</th><th>release</th><th>last result</th>
        <th>last seen</th><th>platform</th><th>tags</th><th>via</th></tr></thead><tbody></tbody></table>
        <script>
        "use strict";
        function cell(row, text, cls) {
          const td = document.createElement("td");
          td.textContent = text == null ? "" : String(text);
          if (cls) td.className = cls;
          row.appendChild(td);
          return td;
        }
        function fill(id, items, render) {
          const body = document.querySelector("#" + id + " tbody");
          body.replaceChildren();
          for (const item of items) { const row = document.createElement("tr"); render(row, item); body.appendChild(row); }
          if (items.length === 0) { const row = document.createElement("tr"); cell(row, "none", "muted"); body.appendChild(row); }
        }
        async function load() {
          try {
            const [fleet, list] = await Promise.all([
              fetch("/v1/fleet").then(r => { if (!r.ok) throw new Error("/v1/fleet: " + r.status); return r.json(); }),
              fetch("/v1/devices?limit=200").then(r => { if (!r.ok) throw new Error("/v1/devices: " + r.status); return r.json(); }),
            ]);
            const halt = fleet.haltAbove == null ? "auto-halt off"
              : "auto-halt above " + (fleet.haltAbove * 100) + "% of the first " + fleet.haltAfter + " attempts";
            document.getElementById("status").textContent = fleet.devices + " devices, " + fleet.staleCount +
              " not seen for " + fleet.staleHours + " h; " + halt + "; updated " + new Date().toLocaleTimeString();
            fill("releases", fleet.releases, (row, r) => {
              cell(row, r.product); cell(row, r.version == null ? "(none)" : r.version);
              cell(row, r.devices, "n"); cell(row, r.failing, r.failing > 0 ? "n bad" : "n");
              cell(row, r.attempts, "n"); cell(row, r.failures, r.failures > 0 ? "n bad" : "n");
              cell(row, r.halted ? "halted" : "offered", r.halted ? "halted" : "");
            });
            fill("channels", fleet.channels, (row, c) => {
              cell(row, c.product); cell(row, c.channel); cell(row, c.version);
              cell(row, c.paused ? "paused" : c.percent + "%" + (c.canaryTags.length ? " + canary " + c.canaryTags.join(", ") : ""));
              const td = cell(row, "");
              const share = c.devices ? c.devicesOnRelease / c.devices : 0;
              const track = document.createElement("span"); track.className = "track";
              const bar = document.createElement("span"); bar.className = "bar"; bar.style.width = (share * 100) + "%";
              track.appendChild(bar); td.appendChild(track);
              td.appendChild(document.createTextNode(c.devicesOnRelease + " of " + c.devices));
            });
            fill("failures", fleet.failures, (row, d) => {
              cell(row, d.id); cell(row, d.version); cell(row, d.attempted); cell(row, d.result, "bad");
              cell(row, d.reason); cell(row, d.lastSeen);
            });
            fill("devices", list.devices, (row, d) => {
              cell(row, d.id); cell(row, d.product); cell(row, d.version); cell(row, d.result);
              cell(row, d.lastSeen); cell(row, d.platform); cell(row, d.tags.join(", ")); cell(row, d.via);
            });
          } catch (error) {
            document.getElementById("status").textContent = "cannot load the fleet: " + error.message;
          }
        }
        load();
        setInterval(load, 10000);
        </script>
        </body>
        </html>
        """
}
