// Proof of work for subscription forms, ALTCHA-style (see service/proof_of_work.py).
//
// Every <form data-pow="https://…/subscribe/challenge"> gets its submit button
// disabled until this script has fetched a challenge, found its number and put
// the answer in a hidden "altcha" field. Readers wait a second or two; bots pay
// the same CPU for every attempt.
//
// Without JavaScript the field stays empty and a server that requires the proof
// refuses the post. That is the publisher's choice when they switch it on:
// fewer bot sign-ups in exchange for the few readers who browse without scripts.
(function () {
  "use strict";

  var CHECKING = "Checking you\u2019re human\u2026";
  var FAILED = "We couldn\u2019t check that you\u2019re human. Please reload the page to try again.";
  // Solve a fresh challenge this long before the current one expires, so a
  // reader who lingers on the page still posts a valid answer.
  var REFRESH_MARGIN_MS = 60 * 1000;

  // Runs in the worker and, if a worker cannot be started (a Content Security
  // Policy without blob: workers), on the page. Written once, so both agree.
  async function solve(challenge) {
    var subtle = self.crypto && self.crypto.subtle;
    if (!subtle) {
      // crypto.subtle exists only on secure (https or localhost) pages.
      throw new Error("crypto.subtle is not available");
    }
    var encoder = new TextEncoder();
    var target = new Uint8Array(32);
    for (var i = 0; i < 32; i++) {
      target[i] = parseInt(challenge.challenge.substr(i * 2, 2), 16);
    }
    for (var number = 0; number <= challenge.maxnumber; number++) {
      var digest = new Uint8Array(await subtle.digest("SHA-256", encoder.encode(challenge.salt + number)));
      var same = true;
      for (var j = 0; j < 32 && same; j++) {
        same = digest[j] === target[j];
      }
      if (same) {
        return number;
      }
    }
    throw new Error("no solution up to maxnumber");
  }

  var WORKER_SOURCE =
    "var solve = " + solve.toString() + ";\n" +
    "self.onmessage = function (event) {\n" +
    "  solve(event.data).then(function (number) { self.postMessage({ number: number }); },\n" +
    "                         function (error) { self.postMessage({ error: String(error) }); });\n" +
    "};\n";

  function solveInWorker(challenge) {
    var url = URL.createObjectURL(new Blob([WORKER_SOURCE], { type: "text/javascript" }));
    return new Promise(function (resolve, reject) {
      var worker;
      try {
        worker = new Worker(url);
      } catch (error) {
        URL.revokeObjectURL(url);
        reject(error);
        return;
      }
      function finish() {
        worker.terminate();
        URL.revokeObjectURL(url);
      }
      worker.onmessage = function (event) {
        finish();
        if (event.data.error) {
          reject(new Error(event.data.error));
        } else {
          resolve(event.data.number);
        }
      };
      worker.onerror = function (event) {
        event.preventDefault();
        finish();
        reject(new Error("worker failed: " + (event.message || "blocked")));
      };
      worker.postMessage(challenge);
    });
  }

  function findNumber(challenge) {
    if (!window.Worker) {
      return solve(challenge);
    }
    return solveInWorker(challenge).catch(function () {
      return solve(challenge);
    });
  }

  function expiresAtMs(salt) {
    var match = /[?&]expires=(\d+)/.exec(salt);
    return match ? Number(match[1]) * 1000 : null;
  }

  function submitButtons(form) {
    return form.querySelectorAll('button[type="submit"], button:not([type]), input[type="submit"]');
  }

  function hiddenField(form) {
    var input = form.querySelector('input[name="altcha"]');
    if (!input) {
      input = document.createElement("input");
      input.type = "hidden";
      input.name = "altcha";
      form.appendChild(input);
    }
    return input;
  }

  function statusLine(form) {
    var status = form.querySelector("[data-pow-status]");
    if (!status) {
      status = document.createElement("p");
      status.setAttribute("data-pow-status", "");
      status.className = "pow-status";
      form.appendChild(status);
    }
    // A polite live region: read out when it changes, without interrupting.
    status.setAttribute("role", "status");
    status.setAttribute("aria-live", "polite");
    return status;
  }

  function protect(form) {
    var url = form.getAttribute("data-pow") || form.action.replace(/\/?$/, "/challenge");
    var field = hiddenField(form);
    var status = statusLine(form);
    var refreshTimer = null;

    function setReady(ready) {
      submitButtons(form).forEach(function (button) {
        button.disabled = !ready;
      });
    }

    function run(keepCurrentAnswer) {
      clearTimeout(refreshTimer);
      if (!keepCurrentAnswer) {
        field.value = "";
        setReady(false);
        status.textContent = CHECKING;
      }
      // No cookies: the challenge is public and may come from another origin.
      fetch(url, { credentials: "omit", cache: "no-store" })
        .then(function (response) {
          if (!response.ok) {
            throw new Error("challenge request failed: " + response.status);
          }
          return response.json();
        })
        .then(function (challenge) {
          return findNumber(challenge).then(function (number) {
            field.value = btoa(JSON.stringify({
              algorithm: challenge.algorithm,
              challenge: challenge.challenge,
              number: number,
              salt: challenge.salt,
              signature: challenge.signature
            }));
            setReady(true);
            status.textContent = "";
            var expires = expiresAtMs(challenge.salt);
            if (expires !== null) {
              // The current answer stays valid (and the button enabled) while
              // the next one is found.
              var delay = Math.max(expires - Date.now() - REFRESH_MARGIN_MS, 5000);
              refreshTimer = setTimeout(function () { run(true); }, delay);
            }
          });
        })
        .catch(function () {
          if (!keepCurrentAnswer) {
            status.textContent = FAILED;
          }
        });
    }

    // A page restored from the back/forward cache holds an answer already spent.
    window.addEventListener("pageshow", function (event) {
      if (event.persisted) {
        run(false);
      }
    });
    run(false);
  }

  document.querySelectorAll("form[data-pow]").forEach(protect);
})();
