// The X-ray mode's results (the LienzoXRay node's UI output): the image, the token breakdown, the schedule,
// the trajectory strip and one attention map per word of the prompt.
import { viewUrl } from "./api.js";

function element(tag, properties = {}, children = []) {
  const node = document.createElement(tag);
  Object.assign(node, properties);
  node.append(...children);
  return node;
}

function picture(entry, filename, alt, subfolder = entry.subfolder) {
  return element("img", { src: viewUrl({ filename, subfolder, type: entry.type }), alt });
}

function tokenTables(tokens) {
  const tables = [];
  for (const tower of tokens.towers) {
    for (const chunk of tower.chunks) {
      const caption = element("caption", {
        textContent: `Tokenizer ${tower.tokenizer + 1}, chunk ${chunk.index + 1} (${chunk.tokens.length} of 75 tokens)`,
      });
      const head = element("tr", {}, ["Position", "Token", "Id", "Weight", "Word"].map(
        (name) => element("th", { scope: "col", textContent: name })));
      const rows = chunk.tokens.map((token) => element("tr", {}, [
        token.position, token.embedding ? `${token.text} (embedding ${token.embedding})` : token.text,
        token.id, token.weight, token.word === null ? "" : tokens.words[token.word].text,
      ].map((value) => element("td", { textContent: String(value) }))));
      tables.push(element("table", { className: "tokens" }, [caption, head, ...rows]));
    }
  }
  return tables;
}

export function renderXray(panel, entry) {
  const maps = entry.maps.map((item) => element("figure", {}, [
    picture(entry, item.filename, `Attention map of "${item.word}"`, item.subfolder),
    element("figcaption", { textContent: `${String(item.index).padStart(2, "0")} ${item.word}` }),
  ]));
  const sigmas = entry.schedule.sigmas.map((value) => value.toFixed(3)).join(", ");
  const parts = [
    element("h2", { textContent: "X-ray" }),
    picture(entry, entry.image, entry.prompt),
    element("h3", { textContent: "Attention maps, one per word" }),
    element("div", { className: "maps" }, maps),
    element("h3", { textContent: "Tokens" }),
    ...tokenTables(entry.tokens),
    element("h3", { textContent: "Schedule" }),
    picture(entry, entry.sigmas, `Sigmas of ${entry.schedule.sampler} / ${entry.schedule.scheduler}`),
    element("p", { className: "details", textContent: `Sigmas: ${sigmas}` }),
  ];
  if (entry.trajectory) {
    parts.push(element("h3", { textContent: "Trajectory" }),
      picture(entry, entry.trajectory, "The x0 prediction and the noisy latent, decoded every few steps"));
  }
  panel.replaceChildren(...parts);
  panel.hidden = false;
}
