// OMS console: each element with data-live follows its feed; the server sends the element's new HTML,
// rendered and escaped like the page itself. EventSource reconnects by itself when the feed drops.
"use strict";
for (const element of document.querySelectorAll("[data-live]")) {
  const feed = new EventSource(element.dataset.live);
  feed.onmessage = (message) => {
    element.innerHTML = message.data;
    element.dataset.updated = String(Date.now());
  };
}
