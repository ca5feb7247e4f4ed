// The chat page: sends prompts over the WebSocket and shows the answer as it streams.
"use strict";
