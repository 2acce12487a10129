"""The browser softphone: a page that calls the bot over the same Media Streams protocol as Twilio."""
